"""yijax: a JAX/Flax research codebase for the Yi family of language models."""

from setuptools import find_packages, setup

setup(
    name="yijax",
    version="0.1.0",
    description="JAX/Flax research codebase for Yi language models: dense and MoE models, "
                "sharded training, Hugging Face interop, and studies built on them.",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["yijax", "yijax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.5.0",
        "flax>=0.10.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "grain>=0.2.10",
        "array-record>=0.5.0",
        "sentencepiece>=0.2.0",
        "tensorflow-datasets>=4.9.7",
        "ml-collections>=1.0.0",
        "absl-py>=2.1.0",
        "numpy>=1.26",
        "ml-dtypes>=0.4.0",
        "safetensors>=0.4.3",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "torch==2.13.0", "transformers>=4.45", "protobuf>=4.25", "lm_eval[hf]>=0.4.5",
                 "tokamax>=0.0.12", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29",
                 "gcsfs>=2024.2.0", "gcp-storage-emulator>=2026.7.19", "ruff>=0.6",
                 # `yijax curate` (the [curate] extra), tested in CI
                 "datatrove>=0.10.1", "fasttext-wheel>=0.9.2", "scikit-learn>=1.3", "orjson>=3.9"],
        "curate": ["datatrove>=0.10.1", "fasttext-wheel>=0.9.2", "scikit-learn>=1.3", "orjson>=3.9"],
        "gcs": ["gcsfs>=2024.2.0"],
        "gpu": ["jax[cuda13]>=0.5.0", "tokamax>=0.0.12"],
        "tpu": ["jax[tpu]>=0.5.0", "gcsfs>=2024.2.0"],
    },
    entry_points={"console_scripts": ["yijax=yijax.cli:entry_point"]},
)
