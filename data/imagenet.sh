#!/usr/bin/env bash
# Pack ImageNet-1k (ILSVRC2012 CLS-LOC) into RecordIO for train_imagenet.py. Nothing is downloaded:
# point it at the images you already have.
#
#   data/imagenet.sh IMAGENET_ROOT [OUT_DIR]          (OUT_DIR default: runs/data/imagenet)
#
# IMAGENET_ROOT layouts recognised (or set TRAIN_DIR / VAL_DIR / VAL_LABELS yourself):
#   train/n01440764/*.JPEG ...        1000 class folders (ILSVRC2012_img_train.tar, each class tar unpacked)
#   ILSVRC/Data/CLS-LOC/train/...     the same, Kaggle "imagenet-object-localization-challenge" layout
# and for validation one of:
#   val/n01440764/*.JPEG ...          class folders (e.g. after the usual valprep.sh)
#   val/*.JPEG + LOC_val_solution.csv (Kaggle; labels are synsets, mapped through the train folders)
#   val/*.JPEG + val.txt              ("ILSVRC2012_val_00000001.JPEG 65", caffe's ilsvrc12 labels)
#
# Labels: index of the class folder in sorted order (n01440764 = 0 ... n15075141 = 999), the order of
# the released CRU-Net checkpoints; the names go to OUT_DIR/imagenet1k_train_synset.txt.
# Writes OUT_DIR/imagenet1k_{train,val}.{lst,rec,idx}: ~1,281,167 and 50,000 records.
#
# Environment: NUM_THREAD (default: all CPUs), TRAIN_RESIZE (480: shorter side reduced to 480 when
# longer; 0 keeps every original), VAL_RESIZE (256; 0 keeps originals, so that the iterator's own bicubic
# resize to 256 is the only one -- the released models' exact preprocessing), QUALITY (95, JPEG quality
# of re-encoded images), SEED (0, list order), PYTHON (default: .venv/bin/python if present, else the python3 on PATH; it must have crunet installed).
# Images that need no change keep their own bytes; grayscale/CMYK/PNG-in-disguise ones are re-encoded.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)        # data/ in the repository, crunet/recipes when installed

. "$HERE/recipe_env.sh"
recipe_env imagenet.sh runs/data/imagenet 23 "$0" "$@"

if [ -z "${TRAIN_DIR:-}" ]; then
  for d in "$ROOT/train" "$ROOT/ILSVRC/Data/CLS-LOC/train" "$ROOT/ILSVRC2012_img_train"; do
    [ -d "$d" ] && { TRAIN_DIR=$d; break; }
  done
fi
if [ -z "${VAL_DIR:-}" ]; then
  for d in "$ROOT/val" "$ROOT/ILSVRC/Data/CLS-LOC/val" "$ROOT/ILSVRC2012_img_val"; do
    [ -d "$d" ] && { VAL_DIR=$d; break; }
  done
fi
[ -n "${TRAIN_DIR:-}" ] || die "no train/ folder under $ROOT (set TRAIN_DIR)"
[ -n "${VAL_DIR:-}" ] || die "no val/ folder under $ROOT (set VAL_DIR)"

# how the validation images are labelled
VAL_LIST=()
if [ -n "${VAL_LABELS:-}" ]; then
  [ -f "$VAL_LABELS" ] || die "VAL_LABELS file not found: $VAL_LABELS"
  VAL_LIST=(--list-file "$VAL_LABELS" --synset "$TRAIN_DIR" --ext .JPEG)
elif [ -n "$(find "$VAL_DIR" -mindepth 1 -maxdepth 1 -type d -print -quit)" ]; then
  VAL_LIST=()                                         # class folders, same names as train/
else
  for f in "$ROOT/LOC_val_solution.csv" "$VAL_DIR/../LOC_val_solution.csv" "$ROOT/val.txt" "$VAL_DIR/../val.txt"; do
    [ -f "$f" ] && { VAL_LIST=(--list-file "$f" --synset "$TRAIN_DIR" --ext .JPEG); break; }
  done
  [ ${#VAL_LIST[@]} -gt 0 ] || die "$VAL_DIR has no class folders and no LOC_val_solution.csv or val.txt was found (set VAL_LABELS)"
fi

mkdir -p "$OUT"
echo "imagenet.sh: train $TRAIN_DIR, val $VAL_DIR ${VAL_LIST[*]:-(class folders)} -> $OUT" >&2
IM2REC=("$PYTHON" -m crunet.data.im2rec)
"${IM2REC[@]}" list "$OUT/imagenet1k_train" "$TRAIN_DIR" --seed "$SEED"
"${IM2REC[@]}" list "$OUT/imagenet1k_val" "$VAL_DIR" --seed "$SEED" ${VAL_LIST[@]+"${VAL_LIST[@]}"}
"${IM2REC[@]}" pack "$OUT/imagenet1k_val.lst" --root "$VAL_DIR" --resize "$VAL_RESIZE" --quality "$QUALITY" \
    --num-thread "$NUM_THREAD"
"${IM2REC[@]}" pack "$OUT/imagenet1k_train.lst" --root "$TRAIN_DIR" --resize "$TRAIN_RESIZE" --quality "$QUALITY" \
    --num-thread "$NUM_THREAD"

ntrain=$(wc -l < "$OUT/imagenet1k_train.idx"); nval=$(wc -l < "$OUT/imagenet1k_val.idx")
ncls=$(wc -l < "$OUT/imagenet1k_train_synset.txt")
echo "imagenet.sh: $ntrain training and $nval validation records, $ncls classes in $OUT" >&2
if [ "$ntrain" != 1281167 ] || [ "$nval" != 50000 ] || [ "$ncls" != 1000 ]; then
  echo "imagenet.sh: note: ImageNet-1k has 1281167 / 50000 images in 1000 classes; pass --num-examples $ntrain --num-classes $ncls to train_imagenet.py" >&2
fi
