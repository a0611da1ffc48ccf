"""The geneval reward: GenEval's judgment rules on hand-made detections (outcomes computed by hand
in the comments), prompt parsing and metadata, training prompt lists, and the real loading path
with a tiny random OWLv2 and CLIP saved with save_pretrained (nothing is downloaded), whose
detections are checked against transformers' own post-processing."""

from __future__ import annotations

import json
import string
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from flowrl.rewards import registry
from flowrl.rewards.base import to_pil, to_uint8
from flowrl.rewards.geneval import (
    COLOR_TEMPLATES,
    QUERY_TEMPLATE,
    Detection,
    GenEvalReward,
    box_iou,
    crop_box,
    judge,
    relative_position,
    select_detections,
)
from flowrl.rewards.geneval_prompts import (
    CLASSES,
    COLORABLE,
    COLORS,
    COUNT_WORDS,
    ENGLISH_PLURALS,
    RELATIONS,
    TAGS,
    Requirement,
    Task,
    english_plural,
    geneval_plural,
    load_metadata,
    parse_prompt,
    render_prompt,
    task_from_metadata,
    training_prompts,
)

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "flowrl" / "recipes" / "prompts"


def det(label: str, box=(0, 0, 10, 10), score: float = 0.9, color: str | None = None) -> Detection:
    return Detection(label, score, tuple(float(v) for v in box), color)


def objects(*detections: Detection) -> dict[str, list[Detection]]:
    """class -> detections, best first (what select_detections hands to judge)."""
    return select_detections(detections, threshold=0.0)


# ---------------------------------------------------------------- judgment rules


def test_counting_needs_at_least_n_and_fewer_than_n_plus_one():
    task = parse_prompt("a photo of two clocks")  # include clock >= 2, exclude clock >= 3
    assert task.include == (Requirement("clock", 2),) and task.exclude == (Requirement("clock", 3),)
    clocks = [det("clock", (20 * i, 0, 20 * i + 10, 10)) for i in range(4)]
    two = judge(task, objects(*clocks[:2]))
    assert two.correct and two.partial == 1.0
    one = judge(task, objects(clocks[0]))  # count part 1/2, nothing excluded
    assert not one.correct and one.partial == pytest.approx(0.5) and "expected clock>=2, found 1" in one.reasons
    three = judge(task, objects(*clocks[:3]))  # include satisfied (1), exclude of 3 violated: x (3 - 1) / 3
    assert not three.correct and three.partial == pytest.approx(2 / 3) and "expected clock<3, found 3" in three.reasons
    four = judge(task, objects(*clocks))  # x (3 - 1) / 4
    assert not four.correct and four.partial == pytest.approx(0.5)
    none = judge(task, {})
    assert not none.correct and none.partial == 0.0
    other = judge(task, objects(*clocks[:2], det("cat")))  # other classes do not matter
    assert other.correct


def test_select_detections_threshold_order_cap_and_nms():
    found = [det("cat", score=s, box=(i, 0, i + 10, 10)) for i, s in enumerate([0.3, 0.95, 0.31, 0.9, 0.2])]
    kept = select_detections(found + [det("dog", score=0.5)], threshold=0.3)
    assert [d.score for d in kept["cat"]] == [0.95, 0.9, 0.31]  # strictly above 0.3, best first
    assert [d.score for d in select_detections(found, threshold=0.9)["cat"]] == [0.95]  # 0.9 is not above 0.9
    assert [d.score for d in select_detections(found, threshold=0.0, max_objects=2)["cat"]] == [0.95, 0.9]
    # GenEval's IoU counts pixels inclusively: (0,0,9,9) and (5,0,14,9) are 10x10 boxes sharing 5x10
    # -> 50 / (100 + 100 - 50) = 1/3.
    assert box_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(1 / 3)
    a, b, c = det("cat", (0, 0, 9, 9), 0.9), det("cat", (5, 0, 14, 9), 0.8), det("cat", (1, 0, 10, 9), 0.7)
    # IoU(a, c) = 9x10 / (200 - 90) = 0.818; IoU(a, b) = 1/3
    assert select_detections([a, b, c], 0.0, max_overlap=0.5)["cat"] == [a, b]  # c suppressed by a
    assert select_detections([a, b, c], 0.0, max_overlap=0.3)["cat"] == [a]  # b too (1/3 >= 0.3)
    assert select_detections([a, b, c], 0.0)["cat"] == [a, b, c]  # 1.0: GenEval's default, no NMS


def test_colour_is_judged_on_the_best_objects():
    task = parse_prompt("a photo of a red car")  # include car >= 1 with colour red
    assert judge(task, objects(det("car", color="red"))).correct
    blue = judge(task, objects(det("car", color="blue")))  # parts: count 1, colour 0 -> 0.5
    assert (
        not blue.correct
        and blue.partial == pytest.approx(0.5)
        and "expected red car>=1, found 0 red" in blue.reasons[0]
    )
    # only the best car is judged (GenEval looks at the `count` most confident objects)
    best_blue = judge(task, objects(det("car", score=0.9, color="blue"), det("car", score=0.8, color="red")))
    assert not best_blue.correct and best_blue.partial == pytest.approx(0.5)
    missing = judge(task, {})  # count 0, colour 0/1 -> 0
    assert missing.partial == 0.0
    with pytest.raises(ValueError, match="needs colours"):
        judge(task, objects(det("car")))
    pair = parse_prompt("a photo of a red car and a blue cup")
    # car: (1 + 1) / 2 = 1; cup: count 1, colour 0 -> 0.5; mean 0.75
    half = judge(pair, objects(det("car", color="red"), det("cup", color="green")))
    assert not half.correct and half.partial == pytest.approx(0.75)
    assert judge(pair, objects(det("car", color="red"), det("cup", color="blue"))).partial == 1.0


@pytest.mark.parametrize(
    "relation, box",
    [
        # reference box (40, 40, 60, 60), centre (50, 50), 20 x 20; the other box is 20 x 20 too, so
        # each axis shrinks by 0.1 x 40 = 4.
        ("left of", (10, 40, 30, 60)),  # offset (-30, 0) -> (-26, 0) / 30: dx = -0.87
        ("right of", (70, 40, 90, 60)),  # offset (30, 0): dx = 0.87
        ("above", (40, 5, 60, 25)),  # offset (0, -35) -> dy = -31 / 35 = -0.89 (y grows downwards)
        ("below", (40, 75, 60, 95)),  # offset (0, 35): dy = 0.89
    ],
)
def test_each_relation(relation, box):
    task = parse_prompt(f"a photo of a dog {relation} a cat")  # include cat, then dog relative to cat
    assert task.include == (Requirement("cat"), Requirement("dog", position=(relation, 0)))
    cat = det("cat", (40, 40, 60, 60))
    assert relative_position(box, cat.box) == {relation}
    assert judge(task, objects(cat, det("dog", box))).correct
    for other in set(RELATIONS) - {relation}:  # the same picture fails every other relation
        wrong = judge(parse_prompt(f"a photo of a dog {other} a cat"), objects(cat, det("dog", box)))
        assert not wrong.correct and wrong.partial == pytest.approx(
            0.5 * (1 + 0.5 * (1 + 0))
        )  # mean(cat 1, dog mean(1, 0))


def test_position_threshold_boundary():
    ref = (0, 0, 10, 10)  # two 10-wide boxes: the x offset shrinks by 0.1 x 20 = 2
    # offset 4: (4 - 2) / 4 = 0.5, not > 0.5 -> no relation
    assert relative_position((4, 0, 14, 10), ref) == set()
    # offset 4.5: 2.5 / 4.5 = 0.56 -> right of
    assert relative_position((4.5, 0, 14.5, 10), ref) == {"right of"}
    assert relative_position((-4.5, 0, 5.5, 10), ref) == {"left of"}
    # offset 2: inside the margin, shrinks to 0 -> no relation at all
    assert relative_position((2, 0, 12, 10), ref) == set()
    # a larger margin (position_threshold 0.2 -> 4) swallows offset 4.5: 0.5 / 4.5 = 0.11
    assert relative_position((4.5, 0, 14.5, 10), ref, threshold=0.2) == set()
    # diagonal point-like boxes: offset (10, 10) -> (0.71, 0.71): right of and below
    assert relative_position((10, 10, 10, 10), (0, 0, 0, 0)) == {"right of", "below"}
    task = parse_prompt("a photo of a dog right of a cat")
    assert not judge(task, objects(det("cat", ref), det("dog", (4, 0, 14, 10)))).correct
    assert judge(task, objects(det("cat", ref), det("dog", (4.5, 0, 14.5, 10)))).correct


def test_position_relative_to_a_failed_group():
    task = parse_prompt("a photo of a dog left of a cat")
    # no cat: cat include 0; dog: count 1, position 0 (no matched target) -> 0.5; mean 0.25
    no_cat = judge(task, objects(det("dog")))
    assert not no_cat.correct and no_cat.partial == pytest.approx(0.25)
    assert "expected cat>=1, found 0" in no_cat.reasons and "no target for dog to be left of" in no_cat.reasons
    # the target is present but fails its colour: GenEval still says "no target"
    coloured = Task(
        "custom", "position", (Requirement("cat", color="black"), Requirement("dog", position=("left of", 0)))
    )
    found = objects(det("cat", (40, 0, 50, 10), color="white"), det("dog", (0, 0, 10, 10)))
    result = judge(coloured, found)  # cat: (1 + 0) / 2; dog: (1 + 0) / 2 -> 0.5
    assert (
        not result.correct
        and result.partial == pytest.approx(0.5)
        and "no target for dog to be left of" in result.reasons
    )
    # own group short of its count: GenEval does not check the position (one reason only)
    two_dogs = Task("custom", "position", (Requirement("cat"), Requirement("dog", 2, position=("left of", 0))))
    short = judge(two_dogs, objects(det("cat", (40, 0, 50, 10)), det("dog", (0, 0, 10, 10))))
    # cat 1; dog: count 1/2, pairs 1 of 2 x 1 -> 0.5 -> mean(1, 0.5) = 0.75
    assert short.reasons == ("expected dog>=2, found 1",) and short.partial == pytest.approx(0.75)
    # both dogs found, one on each side: pairs 1 of 2 -> dog (1 + 0.5) / 2 -> mean(1, 0.75) = 0.875
    split = judge(
        two_dogs, objects(det("cat", (40, 0, 50, 10)), det("dog", (0, 0, 10, 10)), det("dog", (80, 0, 90, 10), 0.8))
    )
    assert not split.correct and split.partial == pytest.approx(0.875)


def test_strict_and_partial_values():
    task = parse_prompt("a photo of a cat and a dog")
    both = judge(task, objects(det("cat"), det("dog")))
    one = judge(task, objects(det("cat")))
    assert (both.correct, both.partial) == (True, 1.0)
    assert (one.correct, one.partial) == (False, 0.5)  # strict 0, partial: one of two includes
    assert judge(parse_prompt("a photo of a cat"), objects(det("cat"), det("dog"))).correct  # extras are fine


# ---------------------------------------------------------------- prompts


def test_plurals_round_trip_for_every_class():
    assert (
        geneval_plural("bus") == "buses"
        and geneval_plural("person") == "persons"
        and geneval_plural("skis") == "skises"
    )
    assert (
        english_plural("person") == "people" and english_plural("knife") == "knives" and english_plural("cat") == "cats"
    )
    forms = {}
    for name in CLASSES:
        for form in {geneval_plural(name), english_plural(name)}:
            assert forms.setdefault(form, name) == name, f"plural {form!r} of {name!r} is also one of {forms[form]!r}"
            for word, count in COUNT_WORDS.items():
                task = parse_prompt(f"a photo of {word} {form}")
                assert task.tag == "counting"
                assert task.include == (Requirement(name, count),) and task.exclude == (Requirement(name, count + 1),)
    assert set(ENGLISH_PLURALS) <= set(CLASSES)
    assert render_prompt(parse_prompt("a photo of three people")) == "a photo of three persons"  # GenEval's spelling
    assert render_prompt(parse_prompt("a photo of three persons"), plural="english") == "a photo of three people"


def every_template_prompt():
    """Each class in every slot of every template (GenEval's articles, colours, relations)."""
    n = len(CLASSES)
    for i, name in enumerate(CLASSES):
        other = CLASSES[(i + 1) % n]
        yield "single_object", (Requirement(name),)
        yield "two_object", (Requirement(name), Requirement(other))
        yield "counting", (Requirement(name, 2 + i % 3),)
        yield "position", (Requirement(other), Requirement(name, position=(RELATIONS[i % 4], 0)))
    for i, name in enumerate(COLORABLE):
        other = COLORABLE[(i + 1) % len(COLORABLE)]
        yield "colors", (Requirement(name, color=COLORS[i % 10]),)
        yield "color_attr", (Requirement(name, color=COLORS[i % 10]), Requirement(other, color=COLORS[(i + 3) % 10]))


def test_every_template_and_class_round_trips():
    seen = set()
    for tag, include in every_template_prompt():
        exclude = (Requirement(include[0].name, include[0].count + 1),) if tag == "counting" else ()
        prompt = render_prompt(Task("", tag, include, exclude))
        task = parse_prompt(prompt)
        assert (task.tag, task.include, task.exclude, task.prompt) == (tag, include, exclude, prompt), prompt
        seen.add(tag)
    assert seen == set(TAGS)
    # GenEval's own wording of a few of its prompts
    assert parse_prompt("a photo of an orange").include == (Requirement("orange"),)
    assert parse_prompt("a photo of an orange orange").include == (Requirement("orange", color="orange"),)
    assert parse_prompt("a photo of an orange and an apple").include == (Requirement("orange"), Requirement("apple"))
    assert parse_prompt("a photo of a white scissors").include == (Requirement("scissors", color="white"),)
    assert parse_prompt("  A photo of a  Computer Mouse.").include == (
        Requirement("computer mouse"),
    )  # case, spaces, full stop
    record = parse_prompt("a photo of a dog right of a teddy bear").to_metadata()
    assert record == {
        "tag": "position",
        "include": [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}],
        "prompt": "a photo of a dog right of a teddy bear",
    }


@pytest.mark.parametrize(
    "prompt",
    ["a photo of a unicorn", "a cat on a mat", "a photo of five cats", "a photo of two cat", "a photo of a teal car"],
)
def test_bad_prompt_names_itself_and_the_forms(prompt):
    with pytest.raises(ValueError) as error:
        parse_prompt(prompt)
    assert (
        repr(prompt) in str(error.value)
        and "accepted forms" in str(error.value)
        and "a photo of two Xs" in str(error.value)
    )


def write_metadata(path: Path, records) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    return path


CUSTOM = {
    "tag": "counting",
    "include": [
        {"class": "apple", "count": 3, "color": "green"},
        {"class": "bowl", "count": 1, "position": ["below", 0]},
    ],
    "exclude": [{"class": "apple", "count": 4}, {"class": "unicorn", "count": 1}],
    "prompt": "three green apples above a bowl, no unicorn",
}


def test_metadata_file(tmp_path):
    plain = parse_prompt("a photo of a bench").to_metadata()
    tasks = load_metadata(write_metadata(tmp_path / "meta.jsonl", [plain, CUSTOM]))
    assert set(tasks) == {"a photo of a bench", CUSTOM["prompt"]}
    custom = tasks[CUSTOM["prompt"]]
    assert custom.tag == "counting" and custom.names == ("apple", "bowl", "unicorn")
    assert custom.include == (Requirement("apple", 3, "green"), Requirement("bowl", position=("below", 0)))
    assert custom.exclude == (Requirement("apple", 4), Requirement("unicorn", 1))
    assert custom.to_metadata() == CUSTOM
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_metadata(tmp_path / "nowhere.jsonl")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        load_metadata(
            tmp_path.joinpath("bad.jsonl").write_text('{"tag": "x", "include": [], "prompt": "p"}\n{oops\n')
            and tmp_path / "bad.jsonl"
        )
    bad = [
        ({"tag": "t", "prompt": "p"}, "missing 'include'"),
        ({"tag": "t", "include": [{"class": "cat", "count": 0}], "prompt": "p"}, "count must be a positive int"),
        ({"tag": "t", "include": [{"class": "cat", "color": "teal"}], "prompt": "p"}, "color 'teal'"),
        ({"tag": "t", "include": [{"class": "cat", "position": ["left of", 0]}], "prompt": "p"}, "earlier include"),
    ]
    for record, message in bad:
        with pytest.raises(ValueError, match=message):
            task_from_metadata(record, "record")


# ---------------------------------------------------------------- training prompts


def test_training_prompts_are_balanced_deterministic_and_parse():
    prompts = training_prompts(100, seed=3)
    assert prompts == training_prompts(100, seed=3) and prompts != training_prompts(100, seed=4)
    tags = [parse_prompt(p).tag for p in prompts]
    assert sorted(tags.count(t) for t in TAGS) == [16, 16, 17, 17, 17, 17]  # 100 = 6 x 16 + 4
    assert len(set(prompts)) == 100
    for p in prompts:
        task = parse_prompt(p)
        assert render_prompt(task) == p  # GenEval's articles and plurals
        assert all(r.name != "person" for r in task.include if r.color)  # no coloured person, as GenEval
        assert len({r.name for r in task.include}) == len(task.include)
    assert training_prompts(0, seed=0) == []
    # single_object has only 80 prompts: asking for more repeats them evenly
    many = [
        p
        for p in training_prompts(6 * 100, seed=0, exclude=["a photo of a cat"])
        if parse_prompt(p).tag == "single_object"
    ]
    assert len(many) == 100 and len(set(many)) == 79 and "a photo of a cat" not in many


def test_shipped_prompt_files():
    train = (PROMPTS_DIR / "geneval_train.txt").read_text().splitlines()
    evaluation = (PROMPTS_DIR / "geneval_eval.txt").read_text().splitlines()
    assert evaluation == training_prompts(64, seed=1)
    assert train == training_prompts(1000, seed=0, exclude=evaluation)
    assert not set(train) & set(evaluation)
    assert sorted([parse_prompt(p).tag for p in train].count(t) for t in TAGS) == [166, 166, 167, 167, 167, 167]


# ---------------------------------------------------------------- the models (tiny, random)


def char_tokenizer(max_length: int = 40):
    """A character-level CLIP BPE tokenizer. "!" takes id 0, as in the real CLIP vocabulary: OWLv2's
    forward treats a query whose first token id is 0 as padding (tests/test_rewards_clip.py's
    helper puts <|startoftext|> there, so it is not reused)."""
    from transformers import CLIPTokenizer

    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    for c in string.ascii_lowercase + string.digits + "-":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """save_pretrained folders: a tiny Owlv2ForObjectDetection + Owlv2Processor (64 px, 16 px
    patches: 16 boxes) and a tiny CLIPModel + CLIPProcessor (32 px)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    root = tmp_path_factory.mktemp("geneval")
    tokenizer = char_tokenizer()
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=40,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    owl = Owlv2ForObjectDetection(
        Owlv2Config(
            text_config=text,
            projection_dim=32,  # = text width, as OWLv2's class head needs
            vision_config=dict(
                image_size=64,
                patch_size=16,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
            ),
        )
    ).eval()
    owl.save_pretrained(root / "owl")
    Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer
    ).save_pretrained(root / "owl")
    clip = CLIPModel(
        CLIPConfig(
            text_config=text,
            projection_dim=16,
            vision_config=dict(
                image_size=32,
                patch_size=8,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
            ),
        )
    ).eval()
    clip.save_pretrained(root / "clip")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(root / "clip")
    return root / "owl", root / "clip", owl, clip


@pytest.fixture(scope="module")
def reward(model_dirs) -> GenEvalReward:
    # threshold 0: a random detector's scores are rarely high; every box then counts
    return GenEvalReward(
        detector=str(model_dirs[0]), color_model=str(model_dirs[1]), threshold=0.0, counting_threshold=0.0
    )


def smooth_images(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """[count, 3, height, width] in [0, 1] holding 8-bit values (what a saved PNG holds)."""
    generator = torch.Generator().manual_seed(seed)
    images = F.interpolate(
        torch.rand(count, 3, 5, 5, generator=generator), size=(height, width), mode="bilinear", align_corners=False
    )
    return torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).float() / 255


SCORED = [
    "a photo of a red car and a blue cup",
    "a photo of a dog left of a cat",
    "a photo of three persons",
    "a photo of a bench",
]


def test_scores_through_the_real_loading_path(reward, model_dirs):
    images = smooth_images(4, 40, 56)
    partial = reward.score(images, SCORED)
    assert partial.shape == (4,) and partial.dtype == torch.float32 and partial.device.type == "cpu"
    assert torch.isfinite(partial).all() and (partial >= 0).all() and (partial <= 1).all()
    judgments = reward.judge_images(images, SCORED)
    assert [j.partial for j in judgments] == pytest.approx(partial.tolist())
    reward.batch_size, reward.mode = 3, "strict"
    try:
        strict = reward.score(images, SCORED)
    finally:
        reward.batch_size, reward.mode = 16, "partial"
    assert strict.tolist() == [float(j.correct) for j in judgments] and (strict <= partial).all()
    assert reward.score(images[:0], []).shape == (0,)
    # prompts about classes the random detector does find, so that colours and positions are judged
    labels = sorted(reward.detect(images[:1])[0], key=lambda n: n == "person")  # a coloured person is not GenEval's
    assert len(labels) >= 2, labels
    found = [f"a photo of a red {labels[0]}", f"a photo of a {labels[0]} left of a {labels[1]}"]
    values = reward.score(images[:1].expand(2, -1, -1, -1), found)
    assert values[0] >= 0.5 and values[1] >= 0.75  # counts met: (1 + colour) / 2; mean(1, (1 + position) / 2)
    loaded = registry.load("geneval", detector=str(model_dirs[0]), color_model=str(model_dirs[1]), mode="strict")
    assert isinstance(loaded, GenEvalReward) and loaded.name == "geneval" and loaded.mode == "strict"
    assert "geneval" in registry.available()


def test_counting_prompts_use_the_counting_threshold(reward):
    images = smooth_images(2, 40, 56, seed=3)
    prompts = ["a photo of three persons", "a photo of a person"]
    reward.counting_threshold = 0.5
    try:
        got = reward.judge_images(images, prompts)
    finally:
        reward.counting_threshold = 0.0
    for image, prompt, threshold, judgment in zip(images, prompts, (0.5, 0.0), got):
        assert judgment == judge(parse_prompt(prompt), reward.detect(image[None], threshold)[0])


def test_detections_match_transformers_post_processing(reward, model_dirs):
    owl = model_dirs[2]
    images = smooth_images(2, 40, 56, seed=1)  # not square: OWLv2 pads to 56 x 56, boxes scale by 56
    ours = reward.detect(images, thresholds=0.0)
    queries = [QUERY_TEMPLATE.format(name) for name in CLASSES]
    for image, got in zip(images, ours):
        inputs = reward.detector_processor(
            text=[queries], images=to_pil(image[None]), return_tensors="pt"
        )  # the documented way
        # the reward hands the processor float pixels (no 1/255 rescale): the same input up to float rounding
        pixels = reward.detector_processor.image_processor(images=[image], do_rescale=False, return_tensors="pt")[
            "pixel_values"
        ]
        torch.testing.assert_close(pixels, inputs["pixel_values"], atol=1e-5, rtol=0)
        with torch.no_grad():  # a random model amplifies 1e-7 input differences: decode the very same pixels
            outputs = owl(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=pixels)
        (expected,) = reward.detector_processor.image_processor.post_process_object_detection(
            outputs, threshold=0.0, target_sizes=[(40, 56)]
        )
        assert (
            len(expected["scores"]) == 16 and sum(len(v) for v in got.values()) == 16
        )  # one box per patch, all above 0
        for label in set(expected["labels"].tolist()):
            rows = (expected["labels"] == label).nonzero().flatten()
            rows = rows[expected["scores"][rows].argsort(descending=True)]
            mine = got[CLASSES[label]]
            torch.testing.assert_close(
                torch.tensor([d.score for d in mine]), expected["scores"][rows], atol=1e-5, rtol=1e-4
            )
            torch.testing.assert_close(torch.tensor([d.box for d in mine]), expected["boxes"][rows], atol=1e-4, rtol=0)


def test_colours_are_clip_zero_shot_on_box_crops(reward, model_dirs):
    clip = model_dirs[3]
    image = smooth_images(1, 48, 40, seed=2)[0]
    found = [det("car", (3.4, 5.6, 30.2, 40.7)), det("cup", (-5, 20, 100, 47.9)), det("car", (10, 10, 10.2, 10.2))]
    assert [crop_box(d.box, 48, 40) for d in found] == [(3, 6, 30, 41), (0, 20, 40, 48), (10, 10, 11, 11)]
    tokenizer = char_tokenizer()
    expected = []
    for d in found:
        x1, y1, x2, y2 = crop_box(d.box, 48, 40)
        crop = image[None, :, y1:y2, x1:x2]
        h, w = crop.shape[-2:]  # CLIP processor: short side to 32 (bicubic, antialiased), centre crop 32
        size = (32, int(32 * w / h)) if h <= w else (int(32 * h / w), 32)
        resized = F.interpolate(crop, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (size[0] - 32) // 2, (size[1] - 32) // 2
        pixels = (
            resized[..., top : top + 32, left : left + 32]
            - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        ) / torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        texts = [t.format(color=c, name=d.label) for c in COLORS for t in COLOR_TEMPLATES]
        with torch.no_grad():
            feature = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)[0]
            text = clip.text_projection(
                clip.text_model(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output
            )
        weights = F.normalize(F.normalize(text, dim=-1).view(10, 3, -1).mean(dim=1), dim=-1)  # mean of the 3 prompts
        expected.append(COLORS[int((weights @ F.normalize(feature, dim=0)).argmax())])
    assert reward.classify_colors(image, found) == expected


def test_prompt_lookup_through_the_reward(model_dirs, tmp_path):
    path = write_metadata(tmp_path / "meta.jsonl", [CUSTOM])
    reward = GenEvalReward(detector=str(model_dirs[0]), color_model=str(model_dirs[1]), metadata=str(path))
    assert reward.task(CUSTOM["prompt"]).names == ("apple", "bowl", "unicorn")
    assert reward.vocabulary[-1] == "unicorn" and reward.query_embeds.shape[0] == 81  # a non-COCO name becomes a query
    assert reward.task("a photo of a bench").include == (Requirement("bench"),)  # not listed: GenEval's templates
    value = reward.score(smooth_images(1, 32, 32), [CUSTOM["prompt"]])
    assert value.shape == (1,) and 0 <= float(value) <= 1
    with pytest.raises(ValueError, match=r"'three apples' not in the metadata file .*meta\.jsonl.*accepted forms"):
        reward.score(smooth_images(1, 32, 32), ["three apples"])


def test_errors(model_dirs, tmp_path):
    owl, clip = str(model_dirs[0]), str(model_dirs[1])
    with pytest.raises(ValueError, match="mode must be one of .*'lenient'"):
        GenEvalReward(detector=owl, color_model=clip, mode="lenient")
    for name, value in [("threshold", 1.5), ("threshold", -0.1), ("counting_threshold", "high"), ("threshold", True)]:
        with pytest.raises(ValueError, match=f"{name} must be a number in \\[0, 1\\), got {value!r}"):
            GenEvalReward(detector=owl, color_model=clip, **{name: value})
    with pytest.raises(ValueError, match="max_objects must be a positive int"):
        GenEvalReward(detector=owl, color_model=clip, max_objects=0)
    with pytest.raises(ValueError, match="batch_size"):
        GenEvalReward(detector=owl, color_model=clip, batch_size=0)
    with pytest.raises(FileNotFoundError, match="no-owl-here"):
        GenEvalReward(detector=str(tmp_path / "no-owl-here"), color_model=clip)
    with pytest.raises(FileNotFoundError, match="no-clip-here"):
        GenEvalReward(detector=owl, color_model=str(tmp_path / "no-clip-here"))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        GenEvalReward(detector=owl, color_model=clip, metadata=tmp_path / "missing.jsonl")


def test_bad_images_and_prompts(reward):
    with pytest.raises(
        ValueError, match=r"reward 'geneval': expected images as a float tensor \[B, 3, H, W\], got \(2, 32, 32\)"
    ):
        reward.score(torch.rand(2, 32, 32), ["a photo of a cat"] * 2)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        reward.score(torch.rand(2, 3, 32, 32), ["a photo of a cat"])
    with pytest.raises(ValueError, match=r"reward 'geneval': prompt 'a cat on a mat' has no metadata .*accepted forms"):
        reward.score(torch.rand(1, 3, 32, 32), ["a cat on a mat"])


# --- mode=flow_grpo: Flow-GRPO's training reward, its values written out per prompt type --------


def flow(prompt: str, *detections: Detection) -> tuple[float, bool]:
    from flowrl.rewards.geneval import flow_grpo_score

    return flow_grpo_score(parse_prompt(prompt), objects(*detections))


def test_flow_grpo_counts_every_detection_and_goes_below_zero():
    for found, expected in zip(range(4), (0.0, 1.0, 0.0, -1.0)):  # 1 - |1 - F|
        assert (
            flow("a photo of a cat", *[det("cat", (20 * i, 0, 20 * i + 10, 10)) for i in range(found)])[0] == expected
        )
    for found, expected in zip(range(7), (0, 1 / 3, 2 / 3, 1, 2 / 3, 1 / 3, 0)):  # three clocks: 1 - |3 - F| / 3
        score, strict = flow(
            "a photo of three clocks", *[det("clock", (20 * i, 0, 20 * i + 10, 10)) for i in range(found)]
        )
        assert score == pytest.approx(expected) and strict == (found == 3)  # the exclude (four) is not read


def test_flow_grpo_colour_counts_only_at_the_exact_count():
    assert flow("a photo of a red car", det("car", color="red")) == (1.0, True)
    assert flow("a photo of a red car", det("car", color="blue")) == (0.5, False)
    assert flow("a photo of a red car")[0] == 0.0  # (0 + 0) / 2
    two = [det("car", (0, 0, 10, 10), color="red"), det("car", (20, 0, 30, 10), color="red")]
    assert flow("a photo of a red car", *two)[0] == 0.0  # (1 - 1 + 0) / 2: colour not judged
    pair = flow(
        "a photo of a red car and a blue cup", det("car", color="red"), det("cup", (20, 0, 30, 10), color="red")
    )
    assert pair == (0.75, False)  # [1, 1, 1, 0]


def test_flow_grpo_relation_failure_still_adds_one():
    cat, dog_left, dog_right = det("cat", (50, 0, 60, 10)), det("dog", (0, 0, 10, 10)), det("dog", (100, 0, 110, 10))
    assert flow("a photo of a dog left of a cat", cat, dog_left) == (1.0, True)  # [1, 1, 1]
    assert flow("a photo of a dog left of a cat", cat, dog_right) == (0.75, False)  # [1, 1, 0, 1]
    score, strict = flow("a photo of a dog left of a cat", cat)  # no dog: [1, 0, 0]
    assert score == pytest.approx(1 / 3) and not strict


def test_flow_grpo_mode_judges_the_jpeg_and_scores_each_observation(reward, model_dirs):
    from flowrl.rewards.geneval import flow_grpo_score, jpeg_round_trip

    images = smooth_images(4, 40, 56)
    flow = GenEvalReward(
        detector=str(model_dirs[0]), color_model=str(model_dirs[1]), threshold=0.0, counting_threshold=0.0,
        mode="flow_grpo",
    )  # fmt: skip
    assert flow.jpeg_quality == 75  # as Flow-GRPO's client sends the images
    values = flow.score(images, SCORED)
    reward.jpeg_quality = 75
    try:
        expected = [flow_grpo_score(task, objects)[0] for task, objects in reward.observe(images, SCORED)]
    finally:
        reward.jpeg_quality = None
    assert values.tolist() == pytest.approx(expected)
    # the round trip is a real JPEG at quality 75: PIL's own encoder reproduces it
    import io

    import numpy as np
    from PIL import Image

    pixels = to_uint8(images[:1])[0]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=75)
    decoded = torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))).permute(2, 0, 1) / 255
    assert torch.equal(jpeg_round_trip(images[:1], 75)[0], decoded.float())
    with pytest.raises(ValueError, match="jpeg_quality"):
        GenEvalReward(detector=str(model_dirs[0]), color_model=str(model_dirs[1]), jpeg_quality=0)


def test_a_threshold_of_geneval_s_detector_is_warned_about(model_dirs):
    owl, clip = str(model_dirs[0]), str(model_dirs[1])
    with pytest.warns(
        UserWarning, match=r"threshold=0\.3, counting_threshold=0\.9 is GenEval's value for its Mask2Former"
    ):
        GenEvalReward(detector=owl, color_model=clip)
    with pytest.warns(UserWarning, match=r"GenEvalReward: counting_threshold=0\.9 is"):
        GenEvalReward(detector=owl, color_model=clip, threshold=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # values chosen for OWLv2: no warning
        GenEvalReward(detector=owl, color_model=clip, threshold=0.2, counting_threshold=0.5)
