"""`bilevel methods` lists every method's options with the defaults of ``Method.build``."""
import inspect

import bilevel
from bilevel.app import cli


def _listing(capsys):
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    blocks, name = {}, None
    for line in out.splitlines():
        if line and not line.startswith(" "):
            name = line.split()[0]
        elif name is not None and "options:" in line:
            blocks[name] = line.split("options:", 1)[1].strip()
    return blocks


def test_methods_lists_each_option_with_its_default(capsys):
    blocks = _listing(capsys)
    assert set(blocks) == set(bilevel.METHODS)
    for name, m in bilevel.METHODS.items():
        params = [p for p in inspect.signature(m.build).parameters.values()
                  if p.kind is inspect.Parameter.KEYWORD_ONLY]
        expected = [p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}" for p in params]
        assert blocks[name] == (", ".join(expected) or "-"), name
        assert [e.split("=")[0] for e in expected] == list(m.options)


def test_methods_listing_examples(capsys):
    blocks = _listing(capsys)
    assert "truncate=None" in blocks["trhg"]
    assert "cg_steps=100" in blocks["cg"]
    assert "bigsam_every=1" in blocks["bigsam"]
    assert blocks["fhg"] == "inner_optimizer='gd', inner_optimizer_options=None"
    assert blocks["bda"].count("inner_optimizer") == 0


def test_required_keyword_option_is_shown_without_default():
    def build(problem, inner_lr, inner_steps, *, needed, opt=2.5):
        raise NotImplementedError

    m = bilevel.methods.Method("fake", build)
    assert cli.method_option_defaults(m) == ["needed", "opt=2.5"]
