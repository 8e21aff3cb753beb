"""Prompts for the teacher. Each names its task on the first line (the simulator and logs key on it)."""

from __future__ import annotations

from vlmprobe.teacher.templates import TemplateSet

# The prompts' version, recorded in each run's provenance and dataset card. Bump it (p2, p3, …) in
# the commit that changes what a prompt says, what it is given or what it asks back; the
# probing-factor templates have their own version (factor_templates/, template_version).
PROMPTS_VERSION = "p1"


def _choices_line(choices: list[str] | None) -> str:
    return f"Choices: {', '.join(choices)}\n" if choices else ""


def factor_prompt(templates: TemplateSet, question: str, answer: str, prediction: str,
                  choices: list[str] | None) -> str:
    lines = "\n".join(f"- {f.category}: \"{f.template}\" ({f.hint})" for f in templates.factors)
    return (
        "Task: probing-factor completion\n"
        "A vision-language model answered a question about the attached image wrongly.\n"
        f"Question: {question}\n{_choices_line(choices)}"
        f"Correct answer: {answer}\nModel's answer: {prediction}\n\n"
        f"Probing-factor templates (set {templates.version}):\n{lines}\n\n"
        "Pick the one category whose factor best explains the mistake, give the value that fills "
        "its {value} blank (a short phrase), the completed template, and one sentence of explanation "
        "grounded in the image."
    )


def verify_prompt(question: str, answer: str, prediction: str, category: str, completion: str) -> str:
    return (
        "Task: probing-factor verification\n"
        "Look at the attached image and check a claimed reason for a model's mistake.\n"
        f"Question: {question}\nCorrect answer: {answer}\nModel's answer: {prediction}\n"
        f"Claimed factor ({category}): {completion}\n\n"
        "Answer supported=true only if the image shows this factor and it plausibly explains the "
        "mistake; give a one-sentence rationale."
    )


def qa_prompt(question: str, answer: str, prediction: str, failure_key: str, completion: str,
              max_items: int = 3) -> str:
    return (
        "Task: targeted QA generation\n"
        "A vision-language model fails on the attached image for this reason:\n"
        f"Factor {failure_key}: {completion}\n"
        f"(It was asked \"{question}\", answered \"{prediction}\"; the truth is \"{answer}\".)\n\n"
        f"Write 1 to {max_items} new question-answer pairs about this image that test exactly this "
        "factor. Mix answer types: yes_no (answer yes or no, no choices), multiple_choice (3-4 "
        "choices, the answer is one of them) and open (a short answer, no choices). Each answer "
        "must be verifiable from the image; give a one-sentence rationale for each."
    )
