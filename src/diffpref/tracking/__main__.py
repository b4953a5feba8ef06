"""The writer process of a stage's run (:func:`diffpref.tracking.writer.write_record`)."""

import json
import sys

from diffpref.tracking.writer import write_record

if head_line := sys.stdin.readline():
    write_record(json.loads(head_line), sys.stdin)
