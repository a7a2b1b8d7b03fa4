"""
Exercise 8: the KV cache of a decoding step (the project's version: model.py, KVCache; used by
sample.generate).

Decoding one token at a time, each layer's attention needs the keys and values of every earlier
token. Recomputing them is quadratic; a cache keeps them. A cache grown by concatenation copies
itself at every step, so this one is allocated once, at its final size, and written in place.
Fill in the class, then: python -m exercises check 8 (it decodes with your cache in the project's
sampler and compares the tokens with the uncached sampler's).
"""


class KVCache:
    """
    One layer's keys and values: k, v of shape (B, H, T, D) for the T tokens seen so far.

    __init__(k, v, size): allocate self.k and self.v of shape (B, H, size, D) (k.new_empty) and
        store the given T positions at the front; self.n = the number of positions filled (T).
    extend(k, v): write the new positions (B, H, T', D) right after the first self.n, in place (no
        new tensor of the cache's size), advance self.n, and return the keys and values of ALL
        positions filled so far, (B, H, self.n, D) each: what attention attends to.
    Inference only: in-place writes and autograd do not mix.
    """

    def __init__(self, k, v, size):
        raise NotImplementedError  # TODO

    def extend(self, k, v):
        raise NotImplementedError  # TODO
