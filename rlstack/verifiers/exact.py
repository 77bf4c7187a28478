"""Exact string match, for tasks whose reference is the complete expected response."""


def exact_match(prompt: str, response: str, reference: str, **extras: object) -> float:
    """Verifier: 1.0 when response and reference are equal after stripping outer whitespace.

    Args:
        prompt: The prompt (unused).
        response: The model's response.
        reference: The expected response.
        **extras: Other fields of the data row (unused).

    Returns:
        1.0 or 0.0; 0.0 also when either is not a string.
    """
    if not isinstance(response, str) or not isinstance(reference, str):
        return 0.0
    return 1.0 if response.strip() == reference.strip() else 0.0
