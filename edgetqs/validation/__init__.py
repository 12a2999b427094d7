"""Check: the float reference, devices (local, emulated ARM, ssh) and the comparison of an artifact's
rollout on a device with the float trajectory."""
