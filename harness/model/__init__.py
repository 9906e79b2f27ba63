"""The backbone: named ViT presets, the LoRA ViT with class-incremental heads (timm + peft), the shipped weights and the pre-training that produced them."""
