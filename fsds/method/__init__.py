"""What the paper computes: the network ``registry`` (one entry per network, the one place that
knows one), the networks (encoder -> decoder -> head), their encoder weights, the losses of
Algorithm 1 (BCE, NBR eqs. 1-3, the CaP weight lambda eqs. 5-6) and crop-and-paste (eq. 4). Pure
tensors in, tensors out; imports only ``fsds.data.images`` (input statistics) and ``fsds.errors``.
"""
