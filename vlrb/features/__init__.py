"""Text and vision encoders, embedding extraction with a resumable cache, and fusion
(docs/method.md#features-and-fusion)."""
from vlrb.features.encoders import (ENCODERS, Encoder, EncoderUnavailableError, build_encoder, build_text_encoder,
                                    build_vision_encoder, encoder_name, register_encoder)

__all__ = ["ENCODERS", "Encoder", "EncoderUnavailableError", "build_encoder", "build_text_encoder",
           "build_vision_encoder", "encoder_name", "register_encoder", "extract_features", "load_features",
           "fuse", "FeatureScaler", "fit_transform_splits"]


def __getattr__(name):  # lazy: importing vlrb.features stays cheap
    if name == "extract_features":
        from vlrb.features.extract import extract_features
        return extract_features
    if name in ("load_features", "fuse", "FeatureScaler", "fit_transform_splits", "load_embeddings", "FUSIONS",
                "StaleFeaturesError"):
        from vlrb.features import fusion
        return getattr(fusion, name)
    raise AttributeError(name)
