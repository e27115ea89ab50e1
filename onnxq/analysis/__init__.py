"""Graph analysis: graph helpers, channel sets, Q/DQ placement, the quantization plan, constant
DequantizeLinear folding and equivalence checks."""
