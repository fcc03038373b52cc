"""Rewards: the final-answer check GSM8K scoring uses, the format term, their weighted sum."""

from adamba.post.rewards import answer_format, combined, exact_answer


def test_exact_answer_and_format():
    ref = "She sold 48/2 = 24 in May.\n48 + 24 = 72 altogether.\n#### 72"
    assert exact_answer("48 + 24 = 72\n#### 72", ref) == 1.0
    assert exact_answer("so the answer is 72.", ref) == 1.0  # the last number when no ####
    assert exact_answer("#### 1,234.00", "1234") == 1.0  # normalised like GSM8K's references
    assert exact_answer("#### 71", ref) == 0.0 and exact_answer("no idea", ref) == 0.0
    assert exact_answer("#### 72 then 5", ref) == 1.0  # the number right after ####
    assert answer_format("#### 7") == 1.0 and answer_format("7") == 0.0
    r = combined({exact_answer: 1.0, answer_format: 0.1})
    assert r("#### 72", ref) == 1.1 and r("#### 70", ref) == 0.1 and r("72", ref) == 1.0
