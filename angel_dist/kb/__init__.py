"""Knowledge bases: readers for UMLS, OBO, MEDIC and target_kb.json into one KB table."""
