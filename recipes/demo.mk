# `make demo`: every stage of the pipeline on small data with the tiny preset, on a CPU:
#   make-demo-data -> prepare-fma, prepare-musdb -> pretrain -> select-channels ->
#   finetune (from pre-training, and from scratch) -> eval -> report, and one song separated.
# File targets: an interrupted demo resumes where it stopped.
#
# Real music instead of the synthesised songs (see docs/real-music.md):
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

.PHONY: demo demo-clean

demo: $(DEMO)/report/report.md $(DEMO)/stems/DONE
	@cat $(DEMO)/report/report.md
	@echo; echo "Separated stems of one song: $$(cat $(DEMO)/stems/DONE)"

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

# one test song through `mixit separate`, with the fine-tuned (pre-trained) model
$(DEMO)/stems/DONE: $(DEMO)/runs/finetune-mixit/DONE
	song="$$(ls -d $(DEMO_MUSDB)/test/*/ | head -n 1)"; \
	$(DEMO_MIXIT) separate "$$song/mixture.wav" --model $(DEMO)/runs/finetune-mixit --out $(@D)/"$$(basename "$$song")" \
		--filename "{stem}.{ext}" --device cpu && echo "$(@D)/$$(basename "$$song")" > $@
