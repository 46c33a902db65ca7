"""The README's Python examples run as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    exec(compile("\n".join(blocks), str(README), "exec"), {})


def test_backend_table_is_the_capability_table():
    from memkernels import capabilities

    text = README.read_text()
    start = text.index("<!-- backend table: python -m memkernels.info --markdown -->\n")
    end = text.index("<!-- end of backend table -->")
    table = text[start:end].split("\n", 1)[1].strip()
    assert table == capabilities.markdown_table()
