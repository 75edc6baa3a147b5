"""UI-format workflows (the ComfyUI editor's save format) -> API-format prompts, and back.

The schemas below repeat the input names and order of ComfyUI's /object_info for the nodes used
(comfy_reference/object_info_*.json), so these tests do not depend on the real node packs; those with the real
packs are in test_ui_workflow_real_nodes.py. The graph builders are in tests/support/ui_workflows.py.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random

import pytest

from engine.core.registry import NodeRegistry
from engine.core.schema import AnyInput, Boolean, Combo, Float, Int, Socket, String, node
from engine.workflow.exporter import api_to_ui
from engine.workflow.widgets import apply_text_replacements, expand_dynamic_prompt, map_widget_values
from tests.support.ui_workflows import Subgraph, Ui, load_fixture
from engine.workflow.convert import (WorkflowFormatError, annotate_node_errors, convert_request, convert_ui_workflow,
                                is_api_prompt, is_ui_workflow, ui_to_api)

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m"]
SCHEDULERS = ["simple", "sgm_uniform", "karras", "normal", "beta"]


def _declare(name, inputs, outputs=(), **options):
    return node(name, inputs=inputs, outputs=outputs, **options)(lambda ctx, **kw: ())


def _test_registry() -> NodeRegistry:
    seed = {"control_after_generate": True}
    return NodeRegistry([
        _declare("UNETLoader", [Combo("unet_name", ["flux1-dev.safetensors"]),
                                Combo("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"])],
                 ["MODEL"], display_name="Load Diffusion Model"),
        _declare("DualCLIPLoader", [Combo("clip_name1", ["clip_l.safetensors"]),
                                    Combo("clip_name2", ["t5xxl_fp16.safetensors"]),
                                    Combo("type", ["sdxl", "sd3", "flux"]),
                                    Combo("device", ["default", "cpu"], optional=True, extra={"advanced": True})],
                 ["CLIP"]),
        _declare("VAELoader", [Combo("vae_name", ["ae.safetensors"])], ["VAE"], display_name="Load VAE"),
        _declare("CLIPTextEncode", [String("text", multiline=True, extra={"dynamicPrompts": True}),
                                    Socket("clip", "CLIP")], ["CONDITIONING"],
                 display_name="CLIP Text Encode (Prompt)"),
        _declare("FluxGuidance", [Socket("conditioning", "CONDITIONING"),
                                  Float("guidance", 3.5, min=0.0, max=100.0, step=0.1)], ["CONDITIONING"]),
        _declare("EmptySD3LatentImage", [Int("width", 1024, min=16, max=16384, step=16),
                                         Int("height", 1024, min=16, max=16384, step=16),
                                         Int("batch_size", 1, min=1, max=4096)], ["LATENT"]),
        _declare("KSampler", [Socket("model", "MODEL"), Int("seed", 0, min=0, max=2**64 - 1, extra=seed),
                              Int("steps", 20, min=1, max=10000),
                              Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                              Combo("sampler_name", SAMPLERS), Combo("scheduler", SCHEDULERS),
                              Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
                              Socket("latent_image", "LATENT"), Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)],
                 ["LATENT"]),
        _declare("RandomNoise", [Int("noise_seed", 0, min=0, max=2**64 - 1, extra=seed)], ["NOISE"]),
        _declare("VAEDecode", [Socket("samples", "LATENT"), Socket("vae", "VAE")], ["IMAGE"],
                 display_name="VAE Decode"),
        _declare("SaveImage", [Socket("images", "IMAGE"), String("filename_prefix", "ComfyUI")], [],
                 output_node=True, display_name="Save Image",
                 hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}),
        _declare("PreviewImage", [Socket("images", "IMAGE")], [], output_node=True, display_name="Preview Image"),
        _declare("LoadImage", [Combo("image", ["example.png", "fox.png"], extra={"image_upload": True})],
                 ["IMAGE", "MASK"], display_name="Load Image"),
        _declare("LoadImageMask", [Combo("image", ["example.png", "mask.png"], extra={"image_upload": True}),
                                   Combo("channel", ["alpha", "red", "green", "blue"])], ["MASK"]),
        _declare("LoraLoader", [Socket("model", "MODEL"), Socket("clip", "CLIP"), Combo("lora_name", ["a.safetensors"]),
                                Float("strength_model", 1.0), Float("strength_clip", 1.0)], ["MODEL", "CLIP"]),
        _declare("ImageBlend", [Socket("image1", "IMAGE"), Socket("image2", "IMAGE", optional=True)], ["IMAGE"]),
        _declare("PrimitiveInt", [Int("value", 0, extra=seed)], ["INT"], display_name="Int"),
        _declare("PrimitiveString", [String("value")], ["STRING"], display_name="String"),
        _declare("PrimitiveBoolean", [Boolean("value")], ["BOOLEAN"], display_name="Boolean"),
        _declare("TagList", [String("tags")], ["STRING"]),
        _declare("ShowAny", [AnyInput("value")], [], output_node=True),
        _declare("ComfySwitchNode", [Boolean("switch", default=None),
                                     Socket("on_false", "COMFY_MATCHTYPE_V3", lazy=True),
                                     Socket("on_true", "COMFY_MATCHTYPE_V3", lazy=True)], ["*"],
                 display_name="Switch"),
        _declare("ForcedInt", [Int("count", 1, force_input=True), Int("lazy_count", 1, lazy=True)], ["INT"]),
    ])


@pytest.fixture(scope="module")
def registry() -> NodeRegistry:
    return _test_registry()


def _sampler_graph(ui: Ui, sampler_widgets=None) -> None:
    """Loader nodes 1-3, prompt 4, latent 5, sampler 6, decode 7, save 8: a minimal FLUX txt2img."""
    ui.add(1, "UNETLoader", ["flux1-dev.safetensors", "default"], outputs=["MODEL"])
    ui.add(2, "DualCLIPLoader", ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"],
           outputs=["CLIP"])
    ui.add(3, "VAELoader", ["ae.safetensors"], outputs=["VAE"])
    ui.add(4, "CLIPTextEncode", ["a fox"], inputs=[("clip", "CLIP")], outputs=["CONDITIONING"])
    ui.add(5, "EmptySD3LatentImage", [512, 512, 1], outputs=["LATENT"])
    ui.add(6, "KSampler", sampler_widgets or [7, "randomize", 4, 1.0, "euler", "simple", 1.0],
           inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                   ("latent_image", "LATENT")], outputs=["LATENT"])
    ui.add(7, "VAEDecode", inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=["IMAGE"])
    ui.add(8, "SaveImage", ["out"], inputs=[("images", "IMAGE")])
    ui.connect(2, 0, 4, "clip")
    ui.connect(4, 0, 6, "positive")
    ui.connect(4, 0, 6, "negative")
    ui.connect(5, 0, 6, "latent_image")
    ui.connect(6, 0, 7, "samples")
    ui.connect(3, 0, 7, "vae")
    ui.connect(7, 0, 8, "images")


# --- the realistic fixtures -------------------------------------------------------------------------------

def test_flux_dev_fixture_converts_to_the_expected_prompt(registry):
    conversion = convert_ui_workflow(load_fixture("flux_dev_txt2img.json"), registry)
    assert conversion.prompt == load_fixture("flux_dev_txt2img.api.json")
    # The muted debug decoder (51) takes the SaveImage it alone feeds (52) with it.
    assert set(conversion.dropped) == {"52"}
    assert "#51 'VAE Decode (debug)'" in conversion.dropped["52"]
    assert conversion.warnings == []
    assert conversion.origins["50:2"].describe() == "#2 'FluxGuidance' in subgraph #50 'Flux prompt'"


def test_nested_subgraph_fixture_with_object_links_converts_to_the_expected_prompt(registry):
    conversion = convert_ui_workflow(load_fixture("flux_nested_subgraphs.json"), registry)
    assert conversion.prompt == load_fixture("flux_nested_subgraphs.api.json")
    assert conversion.dropped == {} and conversion.warnings == []


def test_both_link_shapes_give_the_same_prompt(registry):
    workflow = load_fixture("flux_dev_txt2img.json")
    as_objects = copy.deepcopy(workflow)
    as_objects["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
                           for link in workflow["links"]]
    nested = load_fixture("flux_nested_subgraphs.json")
    as_arrays = copy.deepcopy(nested)
    for graph in [as_arrays, *as_arrays["definitions"]["subgraphs"]]:
        graph["links"] = [[link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                           link["type"]] for link in graph["links"]]
    assert ui_to_api(as_objects, registry) == ui_to_api(workflow, registry)
    assert ui_to_api(as_arrays, registry) == ui_to_api(nested, registry)


# --- widgets_values ----------------------------------------------------------------------------------------

def test_seed_control_value_is_skipped_and_the_rest_map_in_order(registry):
    ui = Ui()
    _sampler_graph(ui, [12345, "increment", 30, 3.5, "heun", "karras", 0.75])
    inputs = ui_to_api(ui.json(), registry)["6"]["inputs"]
    assert {k: v for k, v in inputs.items() if not isinstance(v, list)} == {
        "seed": 12345, "steps": 30, "cfg": 3.5, "sampler_name": "heun", "scheduler": "karras", "denoise": 0.75}


def test_seed_saved_without_a_control_value_still_maps(registry):
    ui = Ui()
    _sampler_graph(ui, [12345, 30, 3.5, "heun", "karras", 0.75])
    inputs = ui_to_api(ui.json(), registry)["6"]["inputs"]
    assert (inputs["seed"], inputs["steps"], inputs["denoise"]) == (12345, 30, 0.75)


def test_missing_trailing_widget_values_take_the_defaults(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.nodes[2]["widgets_values"] = ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux"]  # pre-`device` save
    ui.nodes[6]["widgets_values"] = [9, "fixed", 4, 1.0, "euler", "simple"]
    prompt = ui_to_api(ui.json(), registry)
    assert prompt["2"]["inputs"]["device"] == "default"
    assert prompt["6"]["inputs"]["denoise"] == 1.0


def test_object_shaped_widgets_values_map_by_name(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.nodes[5]["widgets_values"] = {"height": 768, "width": 1344, "batch_size": 2, "stray": 1}
    assert ui_to_api(ui.json(), registry)["5"]["inputs"] == {"width": 1344, "height": 768, "batch_size": 2}


def test_widgets_values_named_wins_over_positions(registry):
    # Saved by an editor whose KSampler had one more widget than ours: the positions are off, the names not.
    ui = Ui()
    _sampler_graph(ui, [8, "fixed", 12, 2.5, "beta_extra", "heun", "karras", 0.5])
    ui.nodes[6]["widgets_values_named"] = {"seed": 8, "steps": 12, "cfg": 2.5, "sampler_name": "heun",
                                           "scheduler": "karras", "denoise": 0.5, "control_after_generate": "fixed"}
    inputs = ui_to_api(ui.json(), registry)["6"]["inputs"]
    assert (inputs["sampler_name"], inputs["scheduler"], inputs["denoise"]) == ("heun", "karras", 0.5)


def test_upload_button_value_is_skipped(registry):
    ui = Ui()
    ui.add(1, "LoadImage", ["fox.png", "image"], outputs=["IMAGE", "MASK"])
    ui.add(2, "LoadImageMask", ["mask.png", "image", "red"], outputs=["MASK"])
    ui.add(3, "LoadImageMask", ["mask.png", "green", "image"], outputs=["MASK"])
    for n in (1, 2, 3):
        ui.add(10 + n, "ShowAny", inputs=[("value", "*")])
        ui.connect(n, 0, 10 + n, "value")
    prompt = ui_to_api(ui.json(), registry)
    assert prompt["1"]["inputs"] == {"image": "fox.png"}
    assert prompt["2"]["inputs"] == {"image": "mask.png", "channel": "red"}
    assert prompt["3"]["inputs"] == {"image": "mask.png", "channel": "green"}


def test_a_linked_widget_keeps_its_slot_and_the_link_wins(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.add(9, "PrimitiveString", ["from a node"], outputs=["STRING"])
    ui.nodes[4]["inputs"].append({"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": None})
    ui.connect(9, 0, 4, "text")
    prompt = ui_to_api(ui.json(), registry, fold_primitives=False)
    assert prompt["4"]["inputs"] == {"text": ["9", 0], "clip": ["2", 0]}


def test_input_is_named_by_its_widget_not_its_label(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.add(9, "PrimitiveInt", [99, "fixed"], outputs=["INT"])
    ui.nodes[6]["inputs"].append({"name": "Seed (renamed)", "label": "Seed (renamed)", "type": "INT",
                                  "widget": {"name": "seed"}, "link": None})
    ui.connect(9, 0, 6, "Seed (renamed)")
    inputs = ui_to_api(ui.json(), registry, fold_primitives=False)["6"]["inputs"]
    assert inputs["seed"] == ["9", 0] and "Seed (renamed)" not in inputs


def test_extra_saved_values_are_reported_and_list_values_are_wrapped(registry):
    ui = Ui()
    ui.add(1, "TagList", [["fox", "snow"], "leftover"], outputs=["STRING"])
    ui.add(2, "ShowAny", inputs=[("value", "*")])
    ui.connect(1, 0, 2, "value")
    conversion = convert_ui_workflow(ui.json(), registry)
    assert conversion.prompt["1"]["inputs"] == {"tags": {"__value__": ["fox", "snow"]}}
    assert any("'leftover'" in w and "#1" in w for w in conversion.warnings)


def test_map_widget_values_reports_defaults_and_leftovers(registry):
    mapped = map_widget_values(registry["KSampler"], [1, "fixed", 2, 3.0, "euler", "simple", 0.5, "surplus"])
    assert mapped.values["denoise"] == 0.5 and mapped.leftovers == ["surplus"] and mapped.defaulted == []
    short = map_widget_values(registry["EmptySD3LatentImage"], [640])
    assert short.values == {"width": 640, "height": 1024, "batch_size": 1}
    assert short.defaulted == ["height", "batch_size"]


# --- reroutes and primitives -------------------------------------------------------------------------------

def test_chained_reroutes_are_followed(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.add(20, "Reroute", inputs=[("", "*")], outputs=["VAE"])
    ui.add(21, "Reroute", inputs=[("", "*")], outputs=["VAE"])
    ui.nodes[7]["inputs"][1]["link"] = None
    ui.links = [link for link in ui.links if link[3] != 7 or link[4] != 1]
    ui.connect(3, 0, 20, "")
    ui.connect(20, 0, 21, "")
    ui.connect(21, 0, 7, "vae")
    prompt = ui_to_api(ui.json(), registry)
    assert prompt["7"]["inputs"]["vae"] == ["3", 0]
    assert "20" not in prompt and "21" not in prompt


def test_reroute_loop_is_an_error_naming_the_node(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.add(20, "Reroute", inputs=[("", "*")], outputs=["VAE"])
    ui.add(21, "Reroute", inputs=[("", "*")], outputs=["VAE"])
    ui.connect(20, 0, 21, "")
    ui.connect(21, 0, 20, "")
    ui.nodes[7]["inputs"][1]["link"] = ui.connect(21, 0, 7, "vae")
    with pytest.raises(WorkflowFormatError) as caught:
        ui_to_api(ui.json(), registry)
    errors = caught.value.node_errors["7"]["errors"]
    assert errors[0]["type"] == "circular_link" and "Reroute" in errors[0]["details"]


def test_primitive_node_value_is_folded_into_every_target(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.add(9, "PrimitiveNode", [4242, "fixed"], outputs=["INT"], title="seed", mode=2)  # mode is ignored
    ui.nodes[9]["outputs"][0]["widget"] = {"name": "seed"}
    ui.add(10, "RandomNoise", [1, "randomize"], inputs=[("noise_seed", "INT", "noise_seed")], outputs=["NOISE"])
    ui.add(11, "ShowAny", inputs=[("value", "*")])
    ui.connect(10, 0, 11, "value")
    ui.nodes[6]["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None})
    ui.connect(9, 0, 6, "seed")
    ui.connect(9, 0, 10, "noise_seed")
    prompt = ui_to_api(ui.json(), registry)
    assert prompt["6"]["inputs"]["seed"] == 4242
    assert prompt["10"]["inputs"] == {"noise_seed": 4242}
    assert "9" not in prompt


def test_primitive_value_nodes_fold_unless_asked_not_to(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.add(9, "PrimitiveInt", [31337, "randomize"], outputs=["INT"])
    ui.nodes[6]["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None})
    ui.connect(9, 0, 6, "seed")
    folded = ui_to_api(ui.json(), registry)
    assert folded["6"]["inputs"]["seed"] == 31337 and "9" not in folded
    kept = ui_to_api(ui.json(), registry, fold_primitives=False)
    assert kept["6"]["inputs"]["seed"] == ["9", 0] and kept["9"]["inputs"] == {"value": 31337}


def _switch_graph(ui: Ui) -> None:
    """PrimitiveBoolean -> switch, PrimitiveInt -> both lazy branches, the switch -> a sampler's seed."""
    _sampler_graph(ui)
    ui.add(9, "PrimitiveInt", [11, "fixed"], outputs=["INT"])
    ui.add(10, "PrimitiveInt", [22, "fixed"], outputs=["INT"])
    ui.add(11, "PrimitiveBoolean", [True], outputs=["BOOLEAN"])
    ui.add(12, "ComfySwitchNode", [], inputs=[("switch", "BOOLEAN", "switch"), ("on_false", "*"), ("on_true", "*")],
           outputs=["*"])
    ui.connect(11, 0, 12, "switch")
    ui.connect(9, 0, 12, "on_false")
    ui.connect(10, 0, 12, "on_true")
    ui.nodes[6]["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None})
    ui.connect(12, 0, 6, "seed")


def test_value_nodes_stay_nodes_where_only_a_link_is_accepted(registry):
    ui = Ui()
    _switch_graph(ui)
    prompt = ui_to_api(ui.json(), registry)
    # The lazy match-type branches keep their value nodes; the BOOLEAN widget `switch` takes the literal.
    assert prompt["12"]["inputs"] == {"switch": True, "on_false": ["9", 0], "on_true": ["10", 0]}
    assert prompt["9"] == {"inputs": {"value": 11}, "class_type": "PrimitiveInt", "_meta": {"title": "Int"}}
    assert prompt["10"]["inputs"] == {"value": 22} and "11" not in prompt
    assert prompt["6"]["inputs"]["seed"] == ["12", 0]


def test_value_nodes_stay_nodes_for_forced_and_lazy_inputs(registry):
    ui = Ui()
    ui.add(9, "PrimitiveInt", [5, "fixed"], outputs=["INT"])
    ui.add(10, "ForcedInt", [None, 1], inputs=[("count", "INT"), ("lazy_count", "INT", "lazy_count")],
           outputs=["INT"])
    ui.add(11, "ShowAny", inputs=[("value", "*")])
    ui.add(12, "PrimitiveInt", [6, "fixed"], outputs=["INT"])
    ui.add(13, "ShowAny", inputs=[("value", "*")])
    ui.connect(9, 0, 10, "count")
    ui.connect(9, 0, 10, "lazy_count")
    ui.connect(10, 0, 11, "value")
    ui.connect(12, 0, 13, "value")  # a '*' input
    prompt = ui_to_api(ui.json(), registry)
    assert prompt["10"]["inputs"] == {"count": ["9", 0], "lazy_count": ["9", 0]}
    assert prompt["9"]["inputs"] == {"value": 5}
    assert prompt["13"]["inputs"] == {"value": ["12", 0]} and prompt["12"]["inputs"] == {"value": 6}


def test_set_and_get_nodes_are_virtual_wires(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.add(20, "SetNode", ["vae"], inputs=[("VAE", "VAE")], outputs=["*"], title="Set_vae")
    ui.add(21, "GetNode", ["vae"], outputs=["VAE"], title="Get_vae")
    ui.connect(3, 0, 20, "VAE")
    ui.nodes[7]["inputs"][1]["link"] = None
    ui.connect(21, 0, 7, "vae")
    prompt = ui_to_api(ui.json(), registry)
    assert prompt["7"]["inputs"]["vae"] == ["3", 0] and not {"20", "21"} & set(prompt)


def test_notes_never_reach_the_prompt(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.add(30, "Note", ["remember the VAE"])
    ui.add(31, "MarkdownNote", ["# FLUX"])
    prompt = ui_to_api(ui.json(), registry)
    assert set(prompt) == {"1", "2", "3", "4", "5", "6", "7", "8"}


# --- muted and bypassed nodes ------------------------------------------------------------------------------

def test_muted_node_is_removed_with_everything_that_then_lacks_a_required_input(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.nodes[5]["mode"] = 2  # the latent: the sampler, the decoder and the save all depend on it
    ui.add(9, "PreviewImage", inputs=[("images", "IMAGE")])
    ui.add(10, "LoadImage", ["fox.png", "image"], outputs=["IMAGE", "MASK"])
    ui.add(11, "ImageBlend", inputs=[("image1", "IMAGE"), ("image2", "IMAGE")], outputs=["IMAGE"])
    ui.connect(10, 0, 11, "image1")
    ui.connect(7, 0, 11, "image2")  # optional: survives without it
    ui.connect(11, 0, 9, "images")
    conversion = convert_ui_workflow(ui.json(), registry)
    assert set(conversion.prompt) == {"1", "2", "3", "4", "9", "10", "11"}
    assert set(conversion.dropped) == {"6", "7", "8"}
    assert conversion.prompt["11"]["inputs"] == {"image1": ["10", 0]}
    assert any("optional input 'image2' left out" in w for w in conversion.warnings)
    assert "EmptySD3LatentImage" in conversion.dropped["6"]


def test_muted_node_input_drops_the_widget_value_too(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.add(9, "PrimitiveInt", [5, "fixed"], outputs=["INT"], mode=2)
    ui.nodes[6]["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None})
    ui.connect(9, 0, 6, "seed")
    conversion = convert_ui_workflow(ui.json(), registry, fold_primitives=False)
    assert "seed" not in conversion.prompt.get("6", {}).get("inputs", {})
    assert "6" in conversion.dropped  # seed is required


def test_bypassed_node_passes_the_input_of_the_matching_type(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.add(9, "LoraLoader", ["a.safetensors", 1.0, 1.0], inputs=[("model", "MODEL"), ("clip", "CLIP")],
           outputs=["MODEL", "CLIP"], mode=4)
    ui.add(10, "LoraLoader", ["a.safetensors", 1.0, 1.0], inputs=[("model", "MODEL"), ("clip", "CLIP")],
           outputs=["MODEL", "CLIP"], mode=4)
    ui.links = [link for link in ui.links if link[1] != 2]
    ui.connect(1, 0, 9, "model")
    ui.connect(2, 0, 9, "clip")
    ui.connect(9, 0, 10, "model")  # a chain of two bypassed nodes
    ui.connect(9, 1, 10, "clip")
    ui.connect(10, 1, 4, "clip")  # CLIP output -> the clip input, not the first input
    ui.nodes[6]["inputs"][0]["link"] = None
    ui.connect(10, 0, 6, "model")
    prompt = ui_to_api(ui.json(), registry)
    assert prompt["4"]["inputs"]["clip"] == ["2", 0]
    assert prompt["6"]["inputs"]["model"] == ["1", 0]
    assert "9" not in prompt and "10" not in prompt


def test_bypassed_node_without_a_matching_input_leaves_the_input_unset(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.add(9, "VAEDecode", inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=["IMAGE"], mode=4)
    ui.connect(6, 0, 9, "samples")
    ui.add(10, "PreviewImage", inputs=[("images", "IMAGE")])
    ui.connect(9, 0, 10, "images")
    conversion = convert_ui_workflow(ui.json(), registry)
    assert conversion.prompt["10"]["inputs"] == {}  # validation reports the missing input
    assert any("bypassed node #9" in w and "IMAGE" in w for w in conversion.warnings)


def test_bypassed_node_of_an_unknown_type_is_fine(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.add(9, "SomeCustomUpscaler", [2.0], inputs=[("image", "IMAGE")], outputs=["IMAGE"], mode=4)
    ui.add(10, "SomeCustomSaver", [], inputs=[("image", "IMAGE")], mode=2)
    ui.connect(7, 0, 9, "image")
    ui.nodes[8]["inputs"][0]["link"] = None
    ui.connect(9, 0, 8, "images")
    ui.connect(7, 0, 10, "image")
    assert ui_to_api(ui.json(), registry)["8"]["inputs"]["images"] == ["7", 0]


# --- subgraphs ---------------------------------------------------------------------------------------------

def _prompt_subgraph(ui: Ui) -> Subgraph:
    """A 'Prompt' subgraph: (clip, text, guidance) -> CONDITIONING, plus the clip passed straight through."""
    sub = Subgraph(ui, "prompt-def", "Prompt", inputs=[("clip", "CLIP"), ("text", "STRING"), ("guidance", "FLOAT")],
                   outputs=[("CONDITIONING", "CONDITIONING"), ("CLIP", "CLIP")])
    sub.add(1, "CLIPTextEncode", ["inner text"], inputs=[("clip", "CLIP"), ("text", "STRING", "text")],
            outputs=["CONDITIONING"])
    sub.add(2, "FluxGuidance", [3.5], inputs=[("conditioning", "CONDITIONING"), ("guidance", "FLOAT", "guidance")],
            outputs=["CONDITIONING"])
    sub.connect(Ui.IN, 0, 1, "clip")
    sub.connect(Ui.IN, 1, 1, "text")
    sub.connect(1, 0, 2, "conditioning")
    sub.connect(Ui.IN, 2, 2, "guidance")
    sub.connect(2, 0, Ui.OUT, "CONDITIONING")
    sub.connect(Ui.IN, 0, Ui.OUT, "CLIP")
    return sub


def _with_prompt_subgraph(ui: Ui, widgets, mode=0, instance_inputs=None) -> None:
    _prompt_subgraph(ui)
    ui.nodes.pop(4)
    ui.links = [link for link in ui.links if 4 not in (link[1], link[3])]
    ui.nodes[6]["inputs"][1]["link"] = ui.nodes[6]["inputs"][2]["link"] = None
    ui.add(4, "prompt-def", widgets, mode=mode, outputs=["CONDITIONING", "CLIP"], title="My prompt",
           inputs=instance_inputs or [("clip", "CLIP"), ("text", "STRING", "text"),
                                      ("guidance", "FLOAT", "guidance")])
    ui.connect(2, 0, 4, "clip")
    ui.connect(4, 0, 6, "positive")
    ui.connect(4, 0, 6, "negative")


def test_subgraph_is_expanded_with_promoted_widgets_and_pass_through(registry):
    ui = Ui()
    _sampler_graph(ui)
    _with_prompt_subgraph(ui, ["a fox in snow", 2.0])
    ui.add(9, "CLIPTextEncode", ["second"], inputs=[("clip", "CLIP")], outputs=["CONDITIONING"])
    ui.add(10, "ShowAny", inputs=[("value", "*")])
    ui.connect(4, 1, 9, "clip")  # the subgraph's CLIP output is its clip input, passed through
    ui.connect(9, 0, 10, "value")
    conversion = convert_ui_workflow(ui.json(), registry)
    prompt = conversion.prompt
    assert prompt["4:1"]["inputs"] == {"text": "a fox in snow", "clip": ["2", 0]}
    assert prompt["4:2"]["inputs"] == {"guidance": 2.0, "conditioning": ["4:1", 0]}
    assert prompt["6"]["inputs"]["positive"] == ["4:2", 0]
    assert prompt["9"]["inputs"]["clip"] == ["2", 0]
    assert "4" not in prompt
    assert conversion.origins["4:1"].subgraphs == (("4", "My prompt"),)


def test_subgraph_input_link_wins_over_the_promoted_value(registry):
    ui = Ui()
    _sampler_graph(ui)
    _with_prompt_subgraph(ui, ["promoted text", 2.0])
    ui.add(9, "PrimitiveString", ["linked text"], outputs=["STRING"])
    ui.connect(9, 0, 4, "text")
    prompt = ui_to_api(ui.json(), registry, fold_primitives=False)
    assert prompt["4:1"]["inputs"]["text"] == ["9", 0]
    assert prompt["4:2"]["inputs"]["guidance"] == 2.0


def test_unpromoted_inner_widget_keeps_its_own_value(registry):
    ui = Ui()
    _sampler_graph(ui)
    _with_prompt_subgraph(ui, [])  # an instance saved without host values
    prompt = ui_to_api(ui.json(), registry)
    assert prompt["4:1"]["inputs"]["text"] == "inner text" and prompt["4:2"]["inputs"]["guidance"] == 3.5


def test_compressed_instance_with_legacy_proxy_widgets(registry):
    # As the official templates save them: no instance sockets listed, values in proxyWidgets order.
    ui = Ui()
    _sampler_graph(ui)
    _with_prompt_subgraph(ui, [1.5, "from proxies"], instance_inputs=[("clip", "CLIP")])
    ui.nodes[4]["properties"] = {"proxyWidgets": [["-1", "guidance"], ["-1", "text"]]}
    prompt = ui_to_api(ui.json(), registry)
    assert prompt["4:1"]["inputs"]["text"] == "from proxies" and prompt["4:2"]["inputs"]["guidance"] == 1.5


def test_instance_values_saved_by_name(registry):
    ui = Ui()
    _sampler_graph(ui)
    _with_prompt_subgraph(ui, ["positional", 9.0])
    ui.nodes[4]["widgets_values_named"] = {"guidance": 4.5, "text": "named"}
    prompt = ui_to_api(ui.json(), registry)
    assert prompt["4:1"]["inputs"]["text"] == "named" and prompt["4:2"]["inputs"]["guidance"] == 4.5


def test_proxy_widget_naming_an_inner_node_overrides_its_value(registry):
    ui = Ui()
    _sampler_graph(ui)
    _with_prompt_subgraph(ui, ["ignored", "direct"], instance_inputs=[("clip", "CLIP")])
    ui.nodes[4]["properties"] = {"proxyWidgets": json.dumps([["2", "$$canvas-image-preview"], ["1", "text"]])}
    assert ui_to_api(ui.json(), registry)["4:1"]["inputs"]["text"] == "direct"


def test_muted_and_bypassed_subgraph_instances(registry):
    ui = Ui()
    _sampler_graph(ui)
    _with_prompt_subgraph(ui, ["x", 2.0], mode=2)
    muted = convert_ui_workflow(ui.json(), registry)
    assert not any(key.startswith("4:") for key in muted.prompt)
    assert {"6", "7", "8"} <= set(muted.dropped)

    ui = Ui()
    _sampler_graph(ui)
    _with_prompt_subgraph(ui, ["x", 2.0], mode=4)
    ui.add(9, "CLIPTextEncode", ["y"], inputs=[("clip", "CLIP")], outputs=["CONDITIONING"])
    ui.add(10, "ShowAny", inputs=[("value", "*")])
    ui.connect(4, 1, 9, "clip")  # bypassed: CLIP output <- its clip input
    ui.connect(9, 0, 10, "value")
    bypassed = ui_to_api(ui.json(), registry)
    assert not any(key.startswith("4:") for key in bypassed)
    assert bypassed["9"]["inputs"]["clip"] == ["2", 0]
    assert "positive" not in bypassed["6"]["inputs"]  # no CONDITIONING input to pass on


def test_subgraph_that_contains_itself_is_refused(registry):
    ui = Ui()
    sub = Subgraph(ui, "loop-def", "Loop", outputs=[("IMAGE", "IMAGE")])
    sub.add(1, "loop-def", [], outputs=["IMAGE"])
    sub.connect(1, 0, Ui.OUT, "IMAGE")
    ui.add(1, "loop-def", [], outputs=["IMAGE"])
    ui.add(2, "PreviewImage", inputs=[("images", "IMAGE")])
    ui.connect(1, 0, 2, "images")
    with pytest.raises(WorkflowFormatError, match="contains itself"):
        ui_to_api(ui.json(), registry)


# --- errors ------------------------------------------------------------------------------------------------

def test_missing_node_types_are_all_listed_with_their_nodes(registry):
    workflow = load_fixture("flux_nested_subgraphs.json")
    workflow["nodes"][5]["type"] = "KSamplerPlusPlus"  # instance 21 becomes an unknown type
    workflow["definitions"]["subgraphs"][1]["nodes"][0]["type"] = "FancyLatent"
    with pytest.raises(WorkflowFormatError) as caught:
        ui_to_api(workflow, registry)
    error = caught.value
    assert error.error["type"] == "missing_node_types"
    assert error.error["extra_info"]["missing_types"] == ["FancyLatent", "KSamplerPlusPlus"]
    assert "#1 'FancyLatent' in subgraph #3 'Empty FLUX latent' in subgraph #20 'Fox sampler'" in error.details
    assert set(error.node_errors) == {"20:3:1", "21"}
    entry = error.node_errors["21"]
    assert entry["class_type"] == "KSamplerPlusPlus"
    assert entry["errors"][0]["extra_info"]["ui_node"]["title"] == "Bird sampler"
    assert error.response() == {"error": error.error, "node_errors": error.node_errors}


def test_malformed_workflows_are_refused_with_every_problem(registry):
    with pytest.raises(WorkflowFormatError, match="Not a UI-format workflow"):
        ui_to_api({"1": {"class_type": "VAELoader", "inputs": {}}}, registry)
    ui = Ui()
    _sampler_graph(ui)
    data = ui.json()
    data["links"].append([999, 1, 0])
    data["nodes"].append({"id": 3, "type": "VAELoader"})
    data["nodes"].append({"type": "VAELoader"})
    with pytest.raises(WorkflowFormatError) as caught:
        ui_to_api(data, registry)
    problems = caught.value.extra_info["problems"]
    assert len(problems) == 3
    assert any("link array needs" in p for p in problems) and any("share the id 3" in p for p in problems)
    with pytest.raises(WorkflowFormatError, match="not valid JSON"):
        ui_to_api("{nodes: ", registry)


def test_dangling_links_are_warned_about_not_fatal(registry):
    ui = Ui()
    _sampler_graph(ui)
    data = ui.json()
    data["links"] = [link for link in data["links"] if link[3] != 7 or link[4] != 1]  # the VAE link
    conversion = convert_ui_workflow(data, registry)
    assert "vae" not in conversion.prompt["7"]["inputs"]
    assert any("refers to link" in w for w in conversion.warnings)


def test_legacy_group_nodes_get_a_clear_error(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.add(9, "workflow>Upscale", [], inputs=[("image", "IMAGE")])
    with pytest.raises(WorkflowFormatError) as caught:
        ui_to_api(ui.json(), registry)
    assert "Convert to Subgraph" in caught.value.details


def test_format_detection():
    assert is_ui_workflow(load_fixture("flux_dev_txt2img.json"))
    assert not is_ui_workflow(load_fixture("flux_dev_txt2img.api.json"))
    assert is_api_prompt(load_fixture("flux_dev_txt2img.api.json"))
    assert not is_api_prompt(load_fixture("flux_dev_txt2img.json"))
    assert not is_ui_workflow({"nodes": "not a list", "links": []}) and not is_api_prompt({})


def test_annotate_node_errors_names_the_ui_node(registry):
    conversion = convert_ui_workflow(load_fixture("flux_nested_subgraphs.json"), registry)
    node_errors = {"20:4": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                        "details": "scheduler", "extra_info": {"input_name": "scheduler"}}],
                            "dependent_outputs": ["31"], "class_type": "KSampler"}}
    annotated = annotate_node_errors(node_errors, conversion)
    ui_node = annotated["20:4"]["errors"][0]["extra_info"]["ui_node"]
    assert ui_node["description"] == "#4 'KSampler' in subgraph #20 'Fox sampler'"
    assert annotated["20:4"]["errors"][0]["extra_info"]["input_name"] == "scheduler"
    assert "ui_node" not in node_errors["20:4"]["errors"][0]["extra_info"]  # the input is not modified


def test_convert_request_answers_like_the_server(registry):
    status, body = convert_request({"workflow": load_fixture("flux_dev_txt2img.json")}, registry)
    assert status == 200 and body["prompt"] == load_fixture("flux_dev_txt2img.api.json")
    assert body["origins"]["50:1"]["subgraphs"] == [{"id": "50", "name": "Flux prompt"}]
    status, body = convert_request({"workflow": {"nodes": [{"id": 1, "type": "Nope"}], "links": []}}, registry)
    assert status == 400 and body["error"]["type"] == "missing_node_types" and "1" in body["node_errors"]


# --- queue-time text rewriting -----------------------------------------------------------------------------

def test_dynamic_prompts_expand_like_the_editor():
    rng = random.Random(3)
    picks = {expand_dynamic_prompt("a {red|green|blue} fox", rng) for _ in range(60)}
    assert picks == {"a red fox", "a green fox", "a blue fox"}
    nested = {expand_dynamic_prompt("{cat|{small|big} dog}", rng) for _ in range(80)}
    assert nested == {"cat", "small dog", "big dog"}
    assert expand_dynamic_prompt("sharp // a comment\nphoto /* hidden */ end", rng) == "sharp \nphoto  end"
    assert expand_dynamic_prompt(r"literal \{braces\} stay", rng) == r"literal \{braces\} stay"


def test_dynamic_prompts_apply_to_dynamic_text_widgets_only(registry):
    ui = Ui()
    _sampler_graph(ui)
    ui.nodes[4]["widgets_values"] = ["a {red|red} fox"]
    ui.nodes[8]["widgets_values"] = ["{keep|this}"]
    prompt = ui_to_api(ui.json(), registry, rng=random.Random(0))
    assert prompt["4"]["inputs"]["text"] == "a red fox"
    assert prompt["8"]["inputs"]["filename_prefix"] == "{keep|this}"
    assert ui_to_api(ui.json(), registry, dynamic_prompts=False)["4"]["inputs"]["text"] == "a {red|red} fox"


def test_filename_prefix_tokens(registry):
    moment = dt.datetime(2025, 3, 7, 9, 5, 1)
    lookup = {("KSampler", "steps"): 28}.get
    text = apply_text_replacements("img/%date:yyyy-MM-dd_hh-mm-ss%_%KSampler.steps%_%width%",
                                   lambda t, w: lookup((t, w)), now=moment)
    assert text == "img/2025-03-07_09-05-01_28_%width%"
    ui = Ui()
    _sampler_graph(ui)
    ui.nodes[8]["widgets_values"] = ["flux_%KSampler.steps%steps_%Nope.x%"]
    assert ui_to_api(ui.json(), registry)["8"]["inputs"]["filename_prefix"] == "flux_4steps_%Nope.x%"


# --- the way back ------------------------------------------------------------------------------------------

def test_api_to_ui_round_trips(registry):
    prompt = load_fixture("flux_dev_txt2img.api.json")
    numeric = {k: v for k, v in prompt.items() if ":" not in k}
    numeric["31"] = copy.deepcopy(numeric["31"])
    numeric["31"]["inputs"]["positive"] = ["7", 0]
    workflow = api_to_ui(numeric, registry)
    assert is_ui_workflow(workflow)
    assert ui_to_api(json.loads(json.dumps(workflow)), registry) == numeric
    seed_node = next(n for n in workflow["nodes"] if n["type"] == "KSampler")
    assert seed_node["widgets_values"][:2] == [424242, "fixed"]
    xs = {n["id"]: n["pos"][0] for n in workflow["nodes"]}
    assert xs[38] < xs[31] < xs[8] < xs[9]  # columns follow the links


def test_saved_ui_workflow_reloads_into_the_same_graph(registry):
    """UI -> API -> UI (our editor's save) -> API gives the same graph, flattened subgraph ids renumbered."""
    first = ui_to_api(load_fixture("flux_dev_txt2img.json"), registry)
    second = ui_to_api(api_to_ui(first, registry), registry)
    renamed = {"50:1": "41", "50:2": "42"}

    def canonical(prompt):
        out = {}
        for key, value in prompt.items():
            inputs = {n: [renamed.get(v[0], v[0]), v[1]] if isinstance(v, list) else v
                      for n, v in value["inputs"].items()}
            out[renamed.get(key, key)] = {**value, "inputs": inputs}
        return out

    assert canonical(first) == second


def test_api_to_ui_refuses_unknown_node_types(registry):
    with pytest.raises(WorkflowFormatError) as caught:
        api_to_ui({"1": {"class_type": "Mystery", "inputs": {}}}, registry)
    assert caught.value.error["type"] == "missing_node_types" and "1" in caught.value.node_errors
