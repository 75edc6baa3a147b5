"""Quantized weights kept as stored (fp8, scaled fp8, GGUF) and dequantized per layer at compute time."""
