"""Plan: bits per tensor under a target's budget (`plan`, `knapsack`), targets, refinement, evaluation,
roundings (RTN, GPTQ) and the allocation methods the benchmark compares."""
