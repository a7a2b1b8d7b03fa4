"""
Exercise 5: masked means and normalisers, the token weights of eq. 1 (the project's version:
grpo.py, token_weights).

The loss of a step is sum over tokens of (per-token term x weight). Padding must weigh nothing,
and when a step's batch is cut into micro-batches, each micro-batch must be divided by the whole
step's normaliser, not its own: then accumulating the micro-batches' gradients gives exactly the
gradient of the whole batch. Fill in the body, then: python -m exercises check 5
"""

from grpo import loss_normalizer  # exercise 4: the normaliser of a whole step


def token_weights(mask, loss_type="grpo", normalizer=None):
    """
    The weight of each token in eq. 1's sums, (B, T): mask / normalizer, and for "grpo" also
    divided by |o_i|, the number of completion tokens of the token's own output.

    mask:       (B, T) float of 0/1 on completion tokens
    normalizer: the whole step's divisor (see loss_normalizer); None means this batch's own,
                loss_normalizer(loss_type, mask). Clamp it to at least 1.
    An output with no tokens, or a batch of nothing but padding, gets weights 0, never NaN.
    """
    raise NotImplementedError  # TODO
