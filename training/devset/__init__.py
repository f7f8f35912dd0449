"""The multimodal dev benchmark: conversations composed from held-out sources, scored through the product."""
