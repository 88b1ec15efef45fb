#!/usr/bin/env bash
# Pack Places365-Standard into RecordIO (train_imagenet.py --num-classes 365). Nothing is downloaded:
# point it at the files you already unpacked.
#
#   data/places365.sh PLACES_ROOT [OUT_DIR]           (OUT_DIR default: runs/data/places365)
#
# PLACES_ROOT holds the official archives unpacked side by side:
#   places365_train_standard.txt, places365_val.txt   (filelist_places365-standard.tar)
#   data_large/a/airfield/00000001.jpg ...            (train_large_places365standard.tar; or data_256/ from
#                                                      train_256_places365standard.tar)
#   val_large/Places365_val_00000001.jpg ...          (val_large.tar; or val_256/ from val_256.tar)
# List lines are "/a/airfield/00000001.jpg 0" and "Places365_val_00000001.jpg 165": the label is given,
# class names are in categories_places365.txt (copied to OUT_DIR/places365_synset.txt when present).
# Writes OUT_DIR/places365_{train,val}.{lst,rec,idx}: 1,803,460 and 36,500 records.
#
# Environment: SIZE (large or 256; default: large if data_large/ exists), TRAIN_DIR / VAL_DIR (image
# folders, overriding SIZE), NUM_THREAD (all CPUs), TRAIN_RESIZE (480), VAL_RESIZE (256; 0 keeps the
# originals), QUALITY (95), SEED (0, list order), PYTHON (default: .venv/bin/python if present, else the python3 on PATH).
# The 256x256 images need no resize: they keep their own bytes.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)        # data/ in the repository, crunet/recipes when installed

. "$HERE/recipe_env.sh"
recipe_env places365.sh runs/data/places365 20 "$0" "$@"

if [ -z "${SIZE:-}" ]; then
  if [ -d "$ROOT/data_large" ]; then SIZE=large; else SIZE=256; fi
fi
TRAIN_DIR=${TRAIN_DIR:-$ROOT/data_$SIZE}
VAL_DIR=${VAL_DIR:-$ROOT/val_$SIZE}
TRAIN_TXT=${TRAIN_TXT:-$ROOT/places365_train_standard.txt}
VAL_TXT=${VAL_TXT:-$ROOT/places365_val.txt}
for f in "$TRAIN_TXT" "$VAL_TXT"; do [ -f "$f" ] || die "list file not found: $f"; done
for d in "$TRAIN_DIR" "$VAL_DIR"; do [ -d "$d" ] || die "image folder not found: $d (set SIZE, TRAIN_DIR or VAL_DIR)"; done

mkdir -p "$OUT"
echo "places365.sh: train $TRAIN_DIR ($TRAIN_TXT), val $VAL_DIR ($VAL_TXT) -> $OUT" >&2
IM2REC=("$PYTHON" -m crunet.data.im2rec)
"${IM2REC[@]}" list "$OUT/places365_train" "$TRAIN_DIR" --list-file "$TRAIN_TXT" --seed "$SEED"
"${IM2REC[@]}" list "$OUT/places365_val" "$VAL_DIR" --list-file "$VAL_TXT" --seed "$SEED"
if [ -f "$ROOT/categories_places365.txt" ]; then
  cp "$ROOT/categories_places365.txt" "$OUT/places365_synset.txt"
fi
"${IM2REC[@]}" pack "$OUT/places365_val.lst" --root "$VAL_DIR" --resize "$VAL_RESIZE" --quality "$QUALITY" \
    --num-thread "$NUM_THREAD"
"${IM2REC[@]}" pack "$OUT/places365_train.lst" --root "$TRAIN_DIR" --resize "$TRAIN_RESIZE" --quality "$QUALITY" \
    --num-thread "$NUM_THREAD"

ntrain=$(wc -l < "$OUT/places365_train.idx"); nval=$(wc -l < "$OUT/places365_val.idx")
echo "places365.sh: $ntrain training and $nval validation records in $OUT" >&2
if [ "$ntrain" != 1803460 ] || [ "$nval" != 36500 ]; then
  echo "places365.sh: note: Places365-Standard has 1803460 / 36500 images; pass --num-examples $ntrain to train_imagenet.py" >&2
fi
