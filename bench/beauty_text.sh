#!/usr/bin/env bash
# Issue 19 on Amazon Beauty: bench/text_llm.sh beauty llm | sasrec | teacher_id | table (see there).
exec "$(dirname "$0")/text_llm.sh" beauty "$@"
