"""A node declaration is checked when registered: inputs against the function, type names, options per type."""

from __future__ import annotations

import pytest

from engine.core.registry import NodeRegistry
from engine.core.schema import AnyInput, Boolean, Combo, Float, Input, Int, Output, Socket, String, node
from engine.core.schema_checks import SchemaError, check_schema
from tests.support.ray_nodes import toys as ray_toys
from tests.support.toy_nodes import NODES as TOY_NODES


def _refused(schema, *fragments: str) -> None:
    with pytest.raises(SchemaError) as caught:
        NodeRegistry([schema])
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_shipped_packs_and_toy_packs_pass():
    registry = NodeRegistry().discover("nodes")
    assert registry.failed == {}
    assert len(registry) > 50
    NodeRegistry([*TOY_NODES, *ray_toys.NODES])


# ----- inputs against the function's signature


def test_declared_input_missing_from_the_function():
    @node("NoParam", inputs=[Int("steps", 1), Float("cfg", 1.0)], outputs=["INT"])
    def no_param(ctx, steps):
        return (steps,)

    _refused(no_param, "node NoParam", "input 'cfg'", "no_param", "no keyword parameter")


def test_kwargs_accept_any_declared_input():
    @node("Kwargs", inputs=[Int("steps", 1), Float("cfg", 1.0, optional=True)], outputs=["INT"],
          hidden={"prompt": "PROMPT"})
    def kwargs(ctx, **inputs):
        return (inputs["steps"],)

    NodeRegistry([kwargs])


def test_required_parameter_without_a_declared_input():
    @node("Undeclared", inputs=[Int("steps", 1)], outputs=["INT"])
    def undeclared(ctx, steps, seed):
        return (steps + seed,)

    _refused(undeclared, "node Undeclared", "parameter 'seed'", "no default", "not a declared input")


def test_optional_input_needs_a_default_in_the_function():
    @node("OptionalNoDefault", inputs=[Socket("image", "IMAGE"), Socket("mask", "MASK", optional=True)],
          outputs=["IMAGE"])
    def optional_no_default(ctx, image, mask):
        return (image,)

    _refused(optional_no_default, "node OptionalNoDefault", "optional input 'mask'", "needs a default")


def test_hidden_inputs_are_always_given_and_must_be_accepted():
    @node("Hidden", inputs=[Int("value", 0)], outputs=[], hidden={"unique_id": "UNIQUE_ID"})
    def hidden(ctx, value, unique_id):
        return ()

    NodeRegistry([hidden])

    @node("HiddenMissing", inputs=[Int("value", 0)], outputs=[], hidden={"prompt": "PROMPT"})
    def hidden_missing(ctx, value):
        return ()

    _refused(hidden_missing, "node HiddenMissing", "hidden input 'prompt'")


def test_function_must_take_the_context_first():
    @node("NoContext", inputs=[Int("value", 0)], outputs=["INT"])
    def no_context(*, value):
        return (value,)

    _refused(no_context, "node NoContext", "node context")


def test_an_input_named_like_the_context_parameter_is_refused():
    @node("ContextClash", inputs=[Int("ctx", 0)], outputs=["INT"])
    def context_clash(ctx):
        return (ctx,)

    _refused(context_clash, "node ContextClash", "input 'ctx'")


def test_positional_only_parameters_cannot_receive_inputs():
    def positional_only(ctx, value, /):
        return (value,)

    schema = node("PositionalOnly", inputs=[Int("value", 0)], outputs=["INT"])(positional_only)
    _refused(schema, "node PositionalOnly", "input 'value'")


def test_lazy_inputs_with_defaults_pass():
    @node("Lazy", inputs=[Boolean("switch", True), AnyInput("a", lazy=True), AnyInput("b", lazy=True)],
          outputs=[Output("*")], check_lazy_status=lambda switch, a=None, b=None: ["a" if switch else "b"])
    def lazy(ctx, switch, a=None, b=None):
        return (a if switch else b,)

    NodeRegistry([lazy])


# ----- type names


def test_unknown_input_type_is_refused():
    @node("Typo", inputs=[Socket("latent", "LATENTS")], outputs=["LATENT"])
    def typo(ctx, latent):
        return (latent,)

    _refused(typo, "node Typo", "input 'latent'", "unknown type 'LATENTS'")


def test_unknown_output_type_is_refused():
    @node("OutTypo", inputs=[], outputs=[Output("IMAGES", "pictures")])
    def out_typo(ctx):
        return (None,)

    _refused(out_typo, "node OutTypo", "output 0 (pictures)", "unknown type 'IMAGES'")


def test_unions_and_any_follow_comfyui():
    @node("Union", inputs=[Socket("x", "IMAGE,MASK"), Socket("y", "*")], outputs=["IMAGE, MASK", "*"])
    def union(ctx, x, y):
        return (x, y)

    NodeRegistry([union])

    @node("BadUnion", inputs=[Socket("x", "IMAGE,MASKS")], outputs=[])
    def bad_union(ctx, x):
        return ()

    _refused(bad_union, "node BadUnion", "unknown type 'MASKS'")


def test_our_own_types_are_known():
    @node("Ours", inputs=[Socket("segmenter", "SEGMENTER"), Socket("control", "CONTROL_NET")],
          outputs=["SEGMENTATION"])
    def ours(ctx, segmenter, control):
        return (None,)

    NodeRegistry([ours])


# ----- options that fit the type


def _one_input(name: str, inp: Input):
    return node(name, inputs=[inp], outputs=[])(lambda ctx, **kw: ())


def test_multiline_only_on_strings():
    _refused(_one_input("MultiModel", Input("model", "MODEL", multiline=True)),
             "node MultiModel", "input 'model'", "'multiline' only fits STRING")
    NodeRegistry([_one_input("MultiText", String("text", multiline=True))])


@pytest.mark.parametrize("option", ["min", "max", "step"])
def test_ranges_only_on_numbers(option):
    _refused(_one_input("RangeText", Input("text", "STRING", **{option: 1})),
             "node RangeText", "input 'text'", f"{option!r} only fits FLOAT or INT")


def test_round_only_on_floats():
    _refused(_one_input("RoundInt", Int("value", 0, round=0.5)), "'round' only fits FLOAT")


def test_front_end_options_per_type():
    _refused(_one_input("SeedText", String("text", extra={"control_after_generate": True})),
             "node SeedText", "'control_after_generate' only fits COMBO or INT")
    _refused(_one_input("UploadImage", Socket("image", "IMAGE", extra={"image_upload": True})),
             "'image_upload' only fits COMBO")
    _refused(_one_input("LabelInt", Int("value", 0, extra={"label_on": "yes"})), "'label_on' only fits BOOLEAN")
    NodeRegistry([_one_input("Seed", Int("seed", 0, extra={"control_after_generate": True})),
                  _one_input("Pick", Combo("pick", ["a", "b"], extra={"image_upload": True}))])


def test_force_input_and_defaults_only_on_widgets():
    _refused(_one_input("ForceModel", Socket("model", "MODEL", force_input=True)),
             "node ForceModel", "input 'model'", "force_input")
    _refused(_one_input("DefaultModel", Socket("model", "MODEL", default="x")),
             "node DefaultModel", "a default only fits widget types")
    NodeRegistry([_one_input("ForceInt", Int("value", 0, force_input=True))])


def test_default_must_fit_the_type_and_range():
    _refused(_one_input("IntText", Input("value", "INT", default="3")), "default '3' is not a INT")
    _refused(_one_input("BoolInt", Int("value", True)), "default True is not a INT")
    _refused(_one_input("Outside", Int("value", 200, min=0, max=100)), "default 200 is outside [0, 100]")
    _refused(_one_input("Inverted", Float("value", 0.5, min=1.0, max=0.0)), "min 1.0 is above max 0.0")
    _refused(_one_input("NotAChoice", Combo("mode", ["a", "b"], default="c")), "default 'c' is not one of its choices")
    NodeRegistry([_one_input("IntAsFloat", Float("value", 1, min=0, max=2))])


def test_combo_needs_its_choices():
    _refused(_one_input("BareCombo", Input("mode", "COMBO")), "node BareCombo", "input 'mode'", "Combo(")
    _refused(_one_input("ChoicesOnInt", Input("mode", "INT", choices=[1, 2])), "input 'mode'", "Combo(")


def test_hidden_name_clashing_with_an_input():
    schema = node("Clash", inputs=[Int("prompt", 0)], outputs=[], hidden={"prompt": "PROMPT"})(lambda ctx, **kw: ())
    _refused(schema, "node Clash", "hidden input 'prompt'")


def test_a_bad_pack_declaration_is_reported_as_a_failed_pack(tmp_path, monkeypatch):
    pack = tmp_path / "badpack" / "broken"
    pack.mkdir(parents=True)
    (tmp_path / "badpack" / "__init__.py").write_text("")
    (pack / "__init__.py").write_text(
        "from engine.core.schema import Socket, node\n"
        "@node('Broken', inputs=[Socket('x', 'NOPE')], outputs=[])\n"
        "def broken(ctx, x):\n    return ()\n"
        "NODES = [broken]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = NodeRegistry().discover("badpack")
    assert "Broken" not in registry
    assert "unknown type 'NOPE'" in registry.failed["badpack.broken"]


def test_check_schema_is_usable_alone():
    check_schema(TOY_NODES[0])
