"""Q1 of the report: the convolution and the loss functions, written from their formulas."""
