# `make demo`: every stage of the pipeline on small data with the tiny preset, on a CPU
# (`make demo-stems`, at the end of this file, builds on it):
#   make-demo-data -> prepare-fma, prepare-musdb -> pretrain -> select-channels ->
#   finetune (from pre-training, and from scratch) -> eval -> report -> listen (a listening page
#   of the test songs, both models side by side), and one song separated.
# File targets: an interrupted demo resumes where it stopped.
#
# Real music instead of the synthesised songs (docs/real-music.md says where to find some):
#   make demo DEMO_UNLABELED=/path/to/game-soundtracks DEMO_MUSDB=/path/to/midistems
# Scale (the defaults fit 20 minutes on 2 cores):
#   DEMO_SONGS, DEMO_TRAIN, DEMO_TEST, DEMO_SECONDS (synthesised data), DEMO_PRE_STEPS,
#   DEMO_FT_STEPS (optimizer steps), DEMO_VALID_FRACTION (unlabeled tracks held out),
#   DEMO_ARGS (extra options for the training commands).

DEMO ?= demo
DEMO_SONGS ?= 32
DEMO_TRAIN ?= 12
DEMO_TEST ?= 4
DEMO_SECONDS ?= 30
DEMO_PRE_STEPS ?= 150
DEMO_FT_STEPS ?= 125
DEMO_VALID_FRACTION ?= 0.15
DEMO_ARGS ?=
DEMO_UNLABELED ?= $(DEMO)/data/unlabeled
DEMO_MUSDB ?= $(DEMO)/data/musdb
DEMO_MIXIT ?= mixit

DEMO_GENERATED := $(if $(filter $(DEMO)/data/%,$(DEMO_UNLABELED) $(DEMO_MUSDB)),$(DEMO)/data/demo.json)
DEMO_TRAIN_ARGS = --workers 2 --device cpu --auto-resume $(DEMO_ARGS)

.PHONY: demo demo-stems demo-clean

demo: $(DEMO)/report/report.md $(DEMO)/stems/DONE $(DEMO)/listen/index.html
	@cat $(DEMO)/report/report.md
	@echo; echo "Separated stems of one song: $$(cat $(DEMO)/stems/DONE)"
	@echo "Listening page (both models side by side): $(DEMO)/listen/index.html"

demo-clean:
	rm -rf $(DEMO)

$(DEMO)/data/demo.json:
	$(DEMO_MIXIT) make-demo-data $(DEMO)/data --songs $(DEMO_SONGS) --musdb-train $(DEMO_TRAIN) --musdb-test $(DEMO_TEST) --seconds $(DEMO_SECONDS) --overwrite

$(DEMO)/prep/fma/summary.json: $(DEMO_GENERATED)
	$(DEMO_MIXIT) prepare-fma --audio-dir $(DEMO_UNLABELED) --out $(@D) --valid-fraction $(DEMO_VALID_FRACTION) --workers 2

$(DEMO)/prep/musdb/summary.json: $(DEMO_GENERATED)
	$(DEMO_MIXIT) prepare-musdb $(DEMO_MUSDB) --out $(@D) --workers 2

$(DEMO)/runs/pretrain/DONE: $(DEMO)/prep/fma/summary.json
	$(DEMO_MIXIT) pretrain --config recipes/demo/pretrain.yaml --data $(<D) --out $(@D) --max-steps $(DEMO_PRE_STEPS) $(DEMO_TRAIN_ARGS)
	$(DEMO_MIXIT) plot $(@D)
	touch $@

$(DEMO)/runs/pretrain/selection.json: $(DEMO)/runs/pretrain/DONE $(DEMO)/prep/musdb/summary.json
	$(DEMO_MIXIT) select-channels $(@D) --musdb $(DEMO)/prep/musdb --out $@ --device cpu

$(DEMO)/runs/finetune-mixit/DONE: $(DEMO)/runs/pretrain/selection.json
	$(DEMO_MIXIT) finetune --config recipes/demo/finetune.yaml --data $(DEMO)/prep/musdb --out $(@D) \
		--init $(DEMO)/runs/pretrain --selection $< --max-steps $(DEMO_FT_STEPS) $(DEMO_TRAIN_ARGS)
	$(DEMO_MIXIT) plot $(@D)
	touch $@

$(DEMO)/runs/finetune-scratch/DONE: $(DEMO)/prep/musdb/summary.json
	$(DEMO_MIXIT) finetune --config recipes/demo/finetune.yaml --data $(<D) --out $(@D) --max-steps $(DEMO_FT_STEPS) $(DEMO_TRAIN_ARGS)
	$(DEMO_MIXIT) plot $(@D)
	touch $@

$(DEMO)/results/%/summary.json: $(DEMO)/runs/%/DONE
	$(DEMO_MIXIT) eval --model $(DEMO)/runs/$* --musdb $(DEMO_MUSDB) --out $(@D) --workers 2 --device cpu

$(DEMO)/report/report.md: $(DEMO)/results/finetune-scratch/summary.json $(DEMO)/results/finetune-mixit/summary.json
	$(DEMO_MIXIT) report tiny-from-scratch=$(DEMO)/results/finetune-scratch tiny-mixit-pretrained=$(DEMO)/results/finetune-mixit --out $(@D)

# the test songs, both models side by side, in a page that opens from file://
$(DEMO)/listen/index.html: $(DEMO)/results/finetune-scratch/summary.json $(DEMO)/results/finetune-mixit/summary.json
	$(DEMO_MIXIT) listen tiny-from-scratch=$(DEMO)/results/finetune-scratch tiny-mixit-pretrained=$(DEMO)/results/finetune-mixit --out $(@D)

# one test song through `mixit separate`, with the fine-tuned (pre-trained) model
$(DEMO)/stems/DONE: $(DEMO)/runs/finetune-mixit/DONE
	song="$$(ls -d $(DEMO_MUSDB)/test/*/ | head -n 1)"; \
	$(DEMO_MIXIT) separate "$$song/mixture.wav" --model $(DEMO)/runs/finetune-mixit --out $(@D)/"$$(basename "$$song")" \
		--filename "{stem}.{ext}" --device cpu && echo "$(@D)/$$(basename "$$song")" > $@

# `make demo-stems` (issue 21): a new instrument learnt from a few songs, after `make demo`, whose
# MixIT pre-training it reuses (it makes it first if it is missing). Songs with a fifth
# instrument, a plucked guitar-like line in its own stem, are prepared as two stems, guitar and
# rest (everything else); 2 of the 12 pre-trained outputs are selected and fine-tuned, and the
# same model from scratch with the same steps; both are evaluated, and the table printed.
# Everything goes to $(DEMO)/guitar/. Scale: DEMO_STEMS_TRAIN (songs in train/, one of them held
# out for validation), DEMO_STEMS_TEST, DEMO_STEMS_SECONDS (>= 8: the activity detection's
# segments), DEMO_STEMS_STEPS; DEMO_ARGS as above; DEMO_EVAL_WORKERS (scoring processes).

DEMO_STEMS_TRAIN ?= 4
DEMO_STEMS_TEST ?= 3
DEMO_STEMS_SECONDS ?= $(DEMO_SECONDS)
DEMO_STEMS_STEPS ?= 50
DEMO_EVAL_WORKERS ?= 2
DEMO_GUITAR = $(DEMO)/guitar

demo-stems: $(DEMO_GUITAR)/report/report.md $(DEMO_GUITAR)/listen/index.html $(DEMO_GUITAR)/separated/DONE
	@cat $(DEMO_GUITAR)/report/report.md
	@echo; echo "Two-stem output of one song (guitar, no_guitar): $$(cat $(DEMO_GUITAR)/separated/DONE)"
	@echo "Listening page (both models side by side): $(DEMO_GUITAR)/listen/index.html"

$(DEMO_GUITAR)/data/demo.json:
	$(DEMO_MIXIT) make-demo-data $(@D) --songs 0 --musdb-train $(DEMO_STEMS_TRAIN) --musdb-valid 0 --musdb-test $(DEMO_STEMS_TEST) \
		--seconds $(DEMO_STEMS_SECONDS) --seed 1 --guitar --overwrite

$(DEMO_GUITAR)/prep/summary.json: $(DEMO_GUITAR)/data/demo.json
	$(DEMO_MIXIT) prepare-stems $(DEMO_GUITAR)/data/musdb --out $(@D) --stems guitar --rest rest --valid-tracks 1 --workers 2

$(DEMO_GUITAR)/selection.json: $(DEMO)/runs/pretrain/DONE $(DEMO_GUITAR)/prep/summary.json
	$(DEMO_MIXIT) select-channels $(DEMO)/runs/pretrain --data $(DEMO_GUITAR)/prep --out $@ --device cpu

$(DEMO_GUITAR)/runs/mixit/DONE: $(DEMO_GUITAR)/selection.json
	$(DEMO_MIXIT) finetune --config recipes/demo/finetune.yaml --data $(DEMO_GUITAR)/prep --out $(@D) \
		--init $(DEMO)/runs/pretrain --selection $< --max-steps $(DEMO_STEMS_STEPS) $(DEMO_TRAIN_ARGS)
	touch $@

$(DEMO_GUITAR)/runs/scratch/DONE: $(DEMO_GUITAR)/prep/summary.json
	$(DEMO_MIXIT) finetune --config recipes/demo/finetune.yaml --data $(<D) --out $(@D) --max-steps $(DEMO_STEMS_STEPS) $(DEMO_TRAIN_ARGS)
	touch $@

$(DEMO_GUITAR)/results/%/summary.json: $(DEMO_GUITAR)/runs/%/DONE
	$(DEMO_MIXIT) eval --model $(DEMO_GUITAR)/runs/$* --data $(DEMO_GUITAR)/prep --out $(@D) --workers $(DEMO_EVAL_WORKERS) --device cpu

$(DEMO_GUITAR)/report/report.md: $(DEMO_GUITAR)/results/scratch/summary.json $(DEMO_GUITAR)/results/mixit/summary.json
	$(DEMO_MIXIT) report guitar-from-scratch=$(DEMO_GUITAR)/results/scratch guitar-mixit-pretrained=$(DEMO_GUITAR)/results/mixit --out $(@D)

$(DEMO_GUITAR)/listen/index.html: $(DEMO_GUITAR)/results/scratch/summary.json $(DEMO_GUITAR)/results/mixit/summary.json
	$(DEMO_MIXIT) listen guitar-from-scratch=$(DEMO_GUITAR)/results/scratch guitar-mixit-pretrained=$(DEMO_GUITAR)/results/mixit --out $(@D)

# one test song with --two-stems guitar: guitar.wav and no_guitar.wav, the sum of the other output
$(DEMO_GUITAR)/separated/DONE: $(DEMO_GUITAR)/runs/mixit/DONE
	song="$$(ls -d $(DEMO_GUITAR)/data/musdb/test/*/ | head -n 1)"; \
	$(DEMO_MIXIT) separate "$$song/mixture.wav" --model $(DEMO_GUITAR)/runs/mixit --two-stems guitar \
		--out $(@D)/"$$(basename "$$song")" --filename "{stem}.{ext}" --device cpu && echo "$(@D)/$$(basename "$$song")" > $@
