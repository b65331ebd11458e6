"""The names the exports, the server and the client agree on, spelled once.

A SavedModel written by :mod:`recsys_tf.export` is read by the server (any TF Serving) and by
the client; what the three must spell alike lives here: signature keys, the outputs the
client reads, the ``GetModelMetadata`` field, and the files and keys of the tables a retrieval
export leaves in ``assets.extra`` for the client. Plain constants: importing this module
imports nothing else.
"""

# -- signature keys ----------------------------------------------------------------------
DEFAULT_SIGNATURE = "serving_default"   # TF Serving's default: the ranker's / retriever's call
ONE_USER_SIGNATURE = "one_user"         # a ranker's user + context inputs as one row
QUERY_SIGNATURE = "query_embedding"     # a retriever's query tower alone
EXAMPLES_SIGNATURE = "examples"         # a ranker on serialized tf.Examples (TF Serving's Regress)

# -- TF Serving's Classify / Regress signatures (tensorflow/cc/saved_model/signature_constants.h)
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
EXAMPLES_INPUT = "inputs"               # Classify / Regress: the serialized tf.Example strings
CLASSES_OUTPUT = "classes"              # Classify: class labels [batch, classes] (string)
CLASS_SCORES_OUTPUT = "scores"          # Classify: class scores [batch, classes] (float)
REGRESSION_OUTPUT = "outputs"           # Regress: one value per example [batch] or [batch, 1]

# -- outputs -----------------------------------------------------------------------------
PROBABILITY_OUTPUT = "probability"      # a ranker: click probability per row
ITEM_IDS_OUTPUT = "item_ids"            # a retriever: the top-k item ids per query
SCORES_OUTPUT = "scores"                # a retriever: their scores
EMBEDDING_OUTPUT = "embedding"          # the query signature: the query embedding

# -- GetModelMetadata --------------------------------------------------------------------
METADATA_SIGNATURE_DEF = "signature_def"   # the one metadata field TF Serving answers

# -- assets.extra of an export -----------------------------------------------------------
ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"  # TF Serving replays it at load
MODEL_CARD_FILE = "model_card.json"
ITEMS_FILE = "items.jsonl"
USERS_FILE = "users.jsonl"
ITEM_EMBEDDINGS_FILE = "item_embeddings.npy"

# model card keys the client reads
CARD_FEATURES = "features"
CARD_CATEGORY_FEATURE = "category_feature"
CARD_INDEX_K = "index_k"
