#!/usr/bin/env bash
# Fails when a module of the engine imports one of a higher layer (ARCHITECTURE.md,
# "Modules and what each may import"). Test modules (`tests.rs` files, and from a
# `#[cfg(test)]` at the start of a line to the end of a file) and comments are not
# checked.
#
#   scripts/check-layers.sh      # prints each violation as file:line, exits 1 if any
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import pathlib, re, sys

LAYERS = {
    # 0 foundations
    "clock": 0, "random": 0, "percent": 0, "threads": 0, "metrics": 0, "path": 0, "jose": 0, "net": 0,
    # 1 settings
    "config": 1,
    # 2 peers (never each other)
    "store": 2, "provider": 2,
    # 3 sessions
    "session": 3,
    # 4 wiring
    "gateway": 4,
    # 5 edges
    "http": 5, "doctor": 5,
}
# The crate root's free functions (`crate::install_crypto_provider`) belong to layer 0.
ROOT_ITEMS = {"install_crypto_provider", "Config", "Gateway"}
src = pathlib.Path("crates/portcullis/src")
bad = []
for path in sorted(src.rglob("*.rs")):
    rel = path.relative_to(src)
    if rel.name in ("lib.rs", "tests.rs"):  # the crate root; test modules
        continue
    module = rel.parts[0].removesuffix(".rs")
    if module not in LAYERS:
        bad.append(f"{path}: module `{module}` has no layer in scripts/check-layers.sh")
        continue
    text = path.read_text()
    cut = re.search(r"^#\[cfg\(test\)\]", text, re.M)
    if cut:
        text = text[: cut.start()]
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("//", 1)[0]
        targets = re.findall(r"\bcrate::([a-z_]+)", code)
        for group in re.findall(r"\bcrate::\{([^}]*)", code):
            targets += re.findall(r"(?:^|,)\s*([a-z_]+)", group)
        for target in targets:
            if target in ROOT_ITEMS or target == module:
                continue
            if target not in LAYERS:
                bad.append(f"{path}:{number}: `crate::{target}` has no layer")
                continue
            mine, theirs = LAYERS[module], LAYERS[target]
            if theirs > mine or (theirs == mine == 2 and target != module):
                bad.append(f"{path}:{number}: `{module}` (layer {mine}) imports `{target}` (layer {theirs})")
for line in bad:
    print(line)
if bad:
    print(f"{len(bad)} layer violation(s); see ARCHITECTURE.md", file=sys.stderr)
    sys.exit(1)
print("layers hold")
PY
