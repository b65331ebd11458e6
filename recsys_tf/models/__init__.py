"""The model zoo. ``MODELS`` maps each CLI name to its class; ``get(name)`` imports it."""
import importlib

MODELS = {
    "two_tower": "recsys_tf.models.two_tower:TwoTower",
    "wide_deep": "recsys_tf.models.wide_deep:WideDeep",
    "deepfm": "recsys_tf.models.deepfm:DeepFM",
    "xdeepfm": "recsys_tf.models.xdeepfm:XDeepFM",
    "dcn_v2": "recsys_tf.models.dcn_v2:DCNv2",
    "dien": "recsys_tf.models.dien:DIEN",
    "din": "recsys_tf.models.din:DIN",
}
RANKERS = ("wide_deep", "deepfm", "xdeepfm", "dcn_v2", "dien", "din")


def get(name: str):
    """The model class registered as ``name``; a clear error if unknown or not built yet."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; models are {sorted(MODELS)}")
    module, cls = MODELS[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise NotImplementedError(f"model {name!r} is not available in this version of "
                                      "recsys_tf yet") from None
        raise
    return getattr(mod, cls)
