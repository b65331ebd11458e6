"""The Colab tutorials (``colab/*.ipynb``) run top to bottom.

Each notebook is executed by a Jupyter kernel (nbclient) in small mode (``RECSYS_TF_SMALL=1``:
tiny sizes, one epoch) against the real data sets in ``$RECSYS_TF_DATA_DIR`` (set by
conftest), in a temporary working directory, with any proxy-aware download pointed at a dead
address so that nothing reaches the network. Outputs stay in memory: the notebook files are
never written. A cell that raises fails the test.

The static checks need no kernel: notebooks are committed without outputs, open with an
"Open in Colab" badge for their own path, and install the package in exactly one cell,
guarded by the Colab check.
"""
import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = pathlib.Path(__file__).resolve().parent.parent
COLAB = ROOT / "colab"
COLAB_URL = "https://colab.research.google.com/github/recsys-tf/recsys_tf/blob/main/colab/"
INSTALL = 'pip install -q "git+https://github.com/recsys-tf/recsys_tf.git"'
COLAB_GUARD = 'if "google.colab" in sys.modules:'
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"

# Small mode on 2 CPU cores: 01 ~15 s, 02 ~60 s (nine rankers are traced), 03 ~25 s, 04 ~25 s;
# a notebook that cannot stay near a minute goes in as pytest.param(name, marks=pytest.mark.slow).
NOTEBOOKS = [
    "01_two_tower_scann.ipynb",
    "02_ranking_zoo.ipynb",
    "03_dien_sequences.ipynb",
    "04_serving_and_reranking.ipynb",
    # a local cluster of 4 processes, then a server process: about 2 min on a busy machine
    pytest.param("05_beyond_one_machine.ipynb", marks=pytest.mark.slow),
]
NAMES = [n if isinstance(n, str) else n.values[0] for n in NOTEBOOKS]


def _read(name):
    return nbformat.read(COLAB / name, as_version=4)


def test_every_tutorial_is_executed():
    assert sorted(p.name for p in COLAB.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_clean(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, \
            f"{name}: commit notebooks without outputs (cell starting {cell.source[:40]!r})"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and BADGE in first.source
    assert f"({COLAB_URL}{name})" in first.source
    installs = [c for c in code if "pip install" in c.source]
    assert len(installs) == 1, f"{name}: the install must be one clearly marked cell"
    assert COLAB_GUARD in installs[0].source and INSTALL in installs[0].source
    # the install comes before anything imports the package
    first_import = next(i for i, c in enumerate(code) if "import recsys_tf" in c.source
                        or "from recsys_tf" in c.source)
    assert code.index(installs[0]) < first_import


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, data_dir, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = _read(name)
    monkeypatch.setenv("RECSYS_TF_SMALL", "1")
    monkeypatch.setenv("RECSYS_TF_DATA_DIR", data_dir)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # a download attempt fails at once
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")  # the bundled server stays reachable
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(nb, timeout=600, startup_timeout=120,
                                     kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell when one fails
    seconds = time.perf_counter() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{name}: no plot was drawn"
    print(f"{name}: {seconds:.0f} s in small mode")
