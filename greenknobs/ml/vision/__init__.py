"""Vision mechanisms: a small ResNet-style CNN, structural channel pruning and residual-block
removal (hybrid: width and depth together), parameter and FLOP counting on the forward pass that
ran, a CNN training loop, and post-training static int8 quantisation of the convolutions.

Nothing here knows about a dataset or a pipeline: a pipeline hands in tensors and reads settings.
"""
