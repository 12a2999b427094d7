"""Score: TQS per weight group (`sweep`), probes, groups, the scores file and the score cache."""
