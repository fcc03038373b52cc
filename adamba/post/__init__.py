"""Post-training: the losses of GRPO, DPO and distillation (grpo.py, dpo.py, distill.py), each
checked against TRL or a written-out reference of its published formula (tests/post/)."""
