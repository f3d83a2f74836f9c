"""The built wheel carries the YAML files and the shipped dataset."""

import glob
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_contains_properties_and_dataset(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), ROOT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = glob.glob(str(tmp_path / "recbole_llm_mtl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("recbole_llm_mtl/properties/overall.yaml", "recbole_llm_mtl/properties/model/LLMMTL.yaml",
                     "recbole_llm_mtl/properties/dataset/amazon.yaml", "recbole_llm_mtl/properties/hyper/LLMMTL.hyper",
                     "recbole_llm_mtl/dataset/amazon/amazon.inter", "recbole_llm_mtl/dataset/amazon/amazon.item",
                     "run_recbole_llm.py", "recbole_llm_mtl/model/llmmtl.py"):
        assert required in names, required
