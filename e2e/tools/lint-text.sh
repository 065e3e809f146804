#!/bin/sh
# lint-text.sh: fail on damaged text files in the repository: any tracked text file over MAX_BYTES, or
# the same non-trivial line (over 20 characters) repeated more than MAX_RUN times in a row, or more than
# MAX_REPEAT times in one Markdown file. A bad edit once turned a 3 KB README into 1.1 MB of one
# repeated table; this catches that class of damage before it lands. Cargo.lock is cargo's and exempt.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MAX_BYTES=${MAX_BYTES:-204800}
MAX_RUN=${MAX_RUN:-8}
MAX_REPEAT=${MAX_REPEAT:-20}
cd "$ROOT"
bad=0
for f in $(git ls-files); do
  [ -f "$f" ] || continue
  [ "$f" = Cargo.lock ] && continue
  # text files only: grep -I treats a file with a NUL byte as binary
  grep -Iq . "$f" 2>/dev/null || continue
  size=$(wc -c < "$f")
  if [ "$size" -gt "$MAX_BYTES" ]; then
    echo "lint-text: $f is $size bytes (over $MAX_BYTES)"; bad=1
  fi
  run=$(awk 'length($0) > 20 { if ($0 == prev) n++; else n = 1; prev = $0; if (n > max) max = n }
             length($0) <= 20 { prev = ""; n = 0 } END { print max + 0 }' "$f")
  if [ "$run" -gt "$MAX_RUN" ]; then
    echo "lint-text: $f repeats one line $run times in a row (over $MAX_RUN)"; bad=1
  fi
  case "$f" in
    *.md)
      rep=$(awk 'length($0) > 20 { c[$0]++ } END { m = 0; for (k in c) if (c[k] > m) m = c[k]; print m }' "$f")
      if [ "$rep" -gt "$MAX_REPEAT" ]; then
        echo "lint-text: $f holds one line $rep times (over $MAX_REPEAT)"; bad=1
      fi ;;
  esac
done
[ "$bad" = 0 ] && echo "lint-text: clean"
exit "$bad"
