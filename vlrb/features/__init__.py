"""Text and vision encoders, embedding extraction with a resumable cache, fusion, the feature recipe of a trained
router and the run's `RoutingData` (docs/method.md#features-and-fusion).

Modules: `base` (the Encoder interface), `encoders` (the encoder classes), `sections` (an encoder config -> its
classes, names, cache identity and encoders), `options` (how an extraction runs), `batches` (items -> batches ->
embeddings), `shards` (the resumable shard store), `loop` and `lightning_predict` (the two drivers of the one
engine), `extract` (the entry point and the cache), `runtime` and `decode` (faster forwards and JPEG decoding),
`fusion`, `recipe`, `routing_data`.
"""
__all__ = ["Encoder", "EncoderUnavailableError", "FeatureRecipe", "FeatureScaler", "RoutingData", "build_encoder",
           "build_text_encoder", "build_vision_encoder", "encoder_name", "extract_features", "fit_transform_splits",
           "fuse", "load_features"]


def __getattr__(name):  # lazy: importing vlrb.features (or one of its modules) loads nothing else
    if name in ("Encoder", "EncoderUnavailableError"):
        from vlrb.features import base
        return getattr(base, name)
    if name in ("build_encoder", "build_text_encoder", "build_vision_encoder", "encoder_name"):
        from vlrb.features import sections
        return getattr(sections, name)
    if name == "extract_features":
        from vlrb.features.extract import extract_features
        return extract_features
    if name in ("load_features", "fuse", "FeatureScaler", "fit_transform_splits", "load_embeddings", "FUSIONS",
                "StaleFeaturesError"):
        from vlrb.features import fusion
        return getattr(fusion, name)
    if name == "FeatureRecipe":
        from vlrb.features.recipe import FeatureRecipe
        return FeatureRecipe
    if name == "RoutingData":
        from vlrb.features.routing_data import RoutingData
        return RoutingData
    raise AttributeError(name)
