#!/usr/bin/env bash
# Print the path of a Quarto >= MIN: the one on PATH, else one installed into the venv
# from PyPI's quarto-cli (that package downloads Quarto itself, so it needs a network).
# Exit 1 with instructions when neither works.
set -u
py=${1:-.venv/bin/python}
min=${2:-1.9}
venv_bin=$(dirname "$py")

new_enough() {  # $1 = quarto binary
  local v
  v=$("$1" --version 2>/dev/null) || return 1
  [ "$(printf '%s\n%s\n' "$min" "$v" | sort -V | head -n 1)" = "$min" ]
}

for candidate in "$(command -v quarto 2>/dev/null)" "$venv_bin/quarto"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && new_enough "$candidate"; then
    echo "$candidate"; exit 0
  fi
done

echo "Quarto >= $min not found on PATH; trying 'pip install quarto-cli' into the venv..." >&2
log=$(mktemp -t quarto-cli-install.XXXXXX.log)
if "$py" -m pip install --quiet "quarto-cli>=$min" >"$log" 2>&1 && [ -x "$venv_bin/quarto" ] \
   && new_enough "$venv_bin/quarto"; then
  echo "$venv_bin/quarto"; exit 0
fi

cat >&2 <<MSG
(pip could not install quarto-cli; its log: $log)

make book needs Quarto $min or newer (the first release that renders book projects to
PDF with Typst), and none could be found or installed.

  Install it from https://quarto.org/docs/get-started/ (or: pip install quarto-cli,
  which downloads Quarto and needs an internet connection), then run 'make book' again.

Meanwhile the chapters are complete as executed notebooks: open them in Jupyter with
  .venv/bin/jupyter lab notebooks/
MSG
exit 1
