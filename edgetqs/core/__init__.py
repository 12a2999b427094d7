"""The model as a dynamical system: ONNX model, rollout, contexts, quantizers, metrics, typed files."""
