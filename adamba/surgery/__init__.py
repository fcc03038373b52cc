"""Checkpoint surgery: grow a trained model without changing what it computes at the moment of
the change (inject new layers; widen, later). Every surgery checks the grown model's logits
against the original's before it writes anything, and records what it did."""
