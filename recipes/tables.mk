# Tables 1-3 of Saijo & Bando (WASPAA 2025) as chains of file targets:
#   prepare -> pretrain -> select-channels -> finetune / freeze-finetune -> eval -> report
# Every stage writes its files under $(WORK); re-running `make tableN` after an interruption
# resumes unfinished training runs (--resume from checkpoints/last.pt), resumes prepare-fma
# and eval where they stopped, and skips finished targets.
#
#   make table1 FMA=/data/fma MUSDB=/data/musdb18hq GPUS=8
#   make -n table2 ...         # print the plan
#
# FMA:   the folder holding fma_<subset>/ and fma_metadata/ (subsets small, medium, large, full);
#        prepare-fma takes FMA's own training/validation split from fma_metadata/tracks.csv
# MUSDB: the MUSDB18-HQ folder holding train/ and test/
# GPUS:  processes per training run (torchrun); 1 runs `mixit` directly
# PRETRAIN_BATCH: mixtures of mixtures per pre-training step over all GPUs (default 128 = 256
#        clips, the authors' 32 clips per GPU on 8 GPUs; PRETRAIN_BATCH=64 is the 4-GPU reading,
#        docs/method.md "The paper, the authors' code and us", row 3)
# PRETRAIN_ACCUM: gradient accumulation of pre-training; by default PRETRAIN_BATCH / (16 x GPUS),
#        at least 1, so that each GPU's forward pass holds the authors' 16 mixtures of
#        mixtures (32 clips): 1 on 8 GPUs, 2 on 4, 8 on one

FMA ?= /path/to/fma
MUSDB ?= /path/to/musdb18hq
GPUS ?= 1
WORK ?= work
PREP_WORKERS ?= 8
EVAL_WORKERS ?= 4
MIXIT ?= mixit
TRAIN ?= $(if $(filter 1,$(GPUS)),$(MIXIT),torchrun --standalone --nproc_per_node=$(GPUS) -m mixitcli)
PRETRAIN_BATCH ?= 128
PRETRAIN_ACCUM ?= $(shell echo $$(( $(PRETRAIN_BATCH) >= 16 * $(GPUS) ? $(PRETRAIN_BATCH) / (16 * $(GPUS)) : 1 )))

DATA := $(WORK)/data
RUNS := $(WORK)/runs
RESULTS := $(WORK)/results
TABLES := $(WORK)/tables

.PHONY: table1 table2 table3 tables check-data
.SECONDARY:

tables: table1 table2 table3

check-data:
	@test -d "$(FMA)" || { echo "FMA=$(FMA) is not a folder: make tableN FMA=/path/to/fma MUSDB=/path/to/musdb18hq"; exit 1; }
	@test -d "$(MUSDB)/train" || { echo "MUSDB=$(MUSDB) has no train/: point it at MUSDB18-HQ"; exit 1; }

# ---------------------------------------------------------------- data
$(DATA)/fma-%/summary.json: | check-data
	$(MIXIT) prepare-fma $(FMA) --subset $* --out $(@D) --workers $(PREP_WORKERS)

$(DATA)/musdb/summary.json: | check-data
	$(MIXIT) prepare-musdb $(MUSDB) --out $(@D)

# ---------------------------------------------------------------- runs
# pre-SIZE-SUBSET: MixIT pre-training of SIZE on FMA SUBSET, and its channel selection.
# Recipe: recipes/pretrain/SIZE.yaml on FMA large, recipes/pretrain/SIZE-fma-SUBSET.yaml on the
# other subsets (the authors' schedule differs per subset: docs/method.md §5).
pretrain_recipe = recipes/pretrain/$(1)$(if $(filter large,$(2)),,-fma-$(2)).yaml

define pretrain_run
$(RUNS)/pre-$(1)-$(2)/DONE: $(DATA)/fma-$(2)/summary.json
	$(TRAIN) pretrain --config $(call pretrain_recipe,$(1),$(2)) --data $(DATA)/fma-$(2) --out $$(@D) \
		--batch-size $(PRETRAIN_BATCH) --grad-accum $(PRETRAIN_ACCUM) --auto-resume
	touch $$@

$(RUNS)/pre-$(1)-$(2)/selection.json: $(RUNS)/pre-$(1)-$(2)/DONE $(DATA)/musdb/summary.json
	$(MIXIT) select-channels $$(@D) --musdb $(DATA)/musdb --out $$@
endef

# ft-SIZE-scratch: supervised from random weights; ft-SIZE-SUBSET: from pre-SIZE-SUBSET
define finetune_run
$(RUNS)/$(1)-$(2)-$(3)/DONE: $(DATA)/musdb/summary.json $(if $(filter scratch random,$(3)),,$(RUNS)/pre-$(2)-$(3)/selection.json)
	$(TRAIN) $(if $(filter fz,$(1)),freeze-finetune,finetune) --config recipes/$(if $(filter fz,$(1)),freeze-finetune,finetune)/$(2).yaml \
		--data $(DATA)/musdb --out $$(@D) $(if $(filter scratch random,$(3)),,--init $(RUNS)/pre-$(2)-$(3) --selection $(RUNS)/pre-$(2)-$(3)/selection.json) --auto-resume
	touch $$@

$(RESULTS)/$(1)-$(2)-$(3)/summary.json: $(RUNS)/$(1)-$(2)-$(3)/DONE
	$(MIXIT) eval --model $(RUNS)/$(1)-$(2)-$(3) --musdb $(MUSDB) --out $$(@D) --workers $(EVAL_WORKERS)
endef

$(foreach size,small medium large,$(eval $(call pretrain_run,$(size),large)))
$(foreach subset,small medium full,$(eval $(call pretrain_run,medium,$(subset))))
$(foreach size,small medium large,$(foreach init,scratch large,$(eval $(call finetune_run,ft,$(size),$(init)))))
$(foreach subset,small medium full,$(eval $(call finetune_run,ft,medium,$(subset))))
$(foreach init,large random,$(eval $(call finetune_run,fz,medium,$(init))))

# ---------------------------------------------------------------- tables
# Table 1: S1/S2, M1/M2, L1/L2 = small/medium/large from scratch vs pre-trained on FMA large
TABLE1 := S1=$(RESULTS)/ft-small-scratch S2=$(RESULTS)/ft-small-large M1=$(RESULTS)/ft-medium-scratch \
	M2=$(RESULTS)/ft-medium-large L1=$(RESULTS)/ft-large-scratch L2=$(RESULTS)/ft-large-large
# Table 2: medium, separator frozen: pre-trained (FMA large) vs random
TABLE2 := medium-freeze-random=$(RESULTS)/fz-medium-random medium-freeze-fma-large=$(RESULTS)/fz-medium-large
# Table 3: medium pre-trained on FMA small / medium / large / full, and no pre-training
TABLE3 := medium-scratch=$(RESULTS)/ft-medium-scratch medium-fma-small=$(RESULTS)/ft-medium-small \
	medium-fma-medium=$(RESULTS)/ft-medium-medium medium-fma-large=$(RESULTS)/ft-medium-large medium-fma-full=$(RESULTS)/ft-medium-full

results_of = $(foreach r,$(1),$(lastword $(subst =, ,$(r)))/summary.json)

$(TABLES)/table%/report.md:
	$(MIXIT) report $(TABLE$*) --out $(@D)

$(TABLES)/table1/report.md: $(call results_of,$(TABLE1))
$(TABLES)/table2/report.md: $(call results_of,$(TABLE2))
$(TABLES)/table3/report.md: $(call results_of,$(TABLE3))

table1: $(TABLES)/table1/report.md
table2: $(TABLES)/table2/report.md
table3: $(TABLES)/table3/report.md
