"""What the lab's text tells a student is true of the model they run (issue 20's holes)."""
from saelab.course.notebooks import LABS_DIR

SOURCE = (LABS_DIR / "lab_c4.py").read_text(encoding="utf-8")


def test_part5_takes_its_layers_from_the_model_not_from_gpt2_in_the_text():
    part5 = SOURCE[SOURCE.index("## Part 5"):SOURCE.index("## Part 6")]
    assert "early and late layers, 2 and 10 of 12," not in part5  # the old text gave GPT-2's layers as the model's
    assert "saelab.notebook_layers(model)" in part5 and "print(f\"{MODEL_NAME}: early layer {EARLY}" in part5


def test_the_glossaries_say_what_an_fvu_above_1_means():
    from saelab.report_page import GLOSSARY
    glossary = SOURCE[SOURCE.index("**Glossary"):SOURCE.index("# %%", SOURCE.index("**Glossary"))]
    assert "**Above 1**" in glossary and "Part 3d" in glossary
    part3d = SOURCE[SOURCE.index("### 3d."):SOURCE.index("## Part 4")]
    assert "FVU above 1" in part3d
    assert "above 1" in dict(GLOSSARY)["FVU (fvu)"]
