"""recsys_tf: a TensorFlow/Keras recommender model zoo and serving bundle."""
from setuptools import find_packages, setup

# The stack only works as a set: ScaNN 1.4.2's TF ops are built against TF 2.20, and
# TFRS 0.7.7 needs Keras 2 (tf-keras). Change these pins together or not at all.
STACK = [
    "tensorflow==2.20.*",
    "tf-keras==2.20.*",
    "tensorflow-recommenders==0.7.7",
    "scann==1.4.2",
    "tensorflow-serving-api==2.20.*",
    "pandas",
    "numpy",
    "grpcio",
    "matplotlib",
]

setup(
    name="recsys_tf",
    version="0.1.0",
    description="Recommender model zoo (two-tower+ScaNN, Wide&Deep, DeepFM, xDeepFM, DCN-v2, DIEN) "
    "with TF Serving exports, a bundled TF Serving-compatible server and a gRPC client.",
    packages=find_packages(include=["recsys_tf", "recsys_tf.*"]),
    python_requires=">=3.10,<3.13",
    install_requires=STACK,
    extras_require={
        "dev": ["pytest>=7", "nbclient", "nbformat", "ipykernel", "jinja2", "pyyaml"],
        "bench": ["deepctr==0.9.4"],
    },
    entry_points={"console_scripts": ["recsys-tf=recsys_tf.cli:main"]},
)
