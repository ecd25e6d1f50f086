# Trained model + test split -> a gallery index (`tbps index`) and a demo search page for the report.


rule search_index:
    """The test split's images embedded once by a trained model: what `tbps search` answers from."""
    input:
        checkpoint="results/{dataset}/{experiment}/train/final.pt",
        shards="results/{dataset}/shards/test/manifest.json",
    output:
        index=directory("results/{dataset}/{experiment}/search/test.index"),
    log:
        "logs/search/{dataset}/{experiment}/index.log",
    benchmark:
        "logs/benchmarks/search/{dataset}/{experiment}/index.tsv"
    conda:
        "../../envs/tbps.yaml"
    threads: 2
    resources:
        gpu=get_gpus,
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m tbps index --checkpoint {input.checkpoint:q} --images {input.shards:q}"
        " --out {output.index:q} --workers {threads:q} > {log:q} 2>&1"


rule search_demo:
    """The demo search page: the configured descriptions plus test captions with known answers."""
    input:
        index="results/{dataset}/{experiment}/search/test.index",
    output:
        page=report(
            "results/{dataset}/{experiment}/search/demo.html",
            caption="../report/search.rst",
            category="Search",
            labels={
                "dataset": "{dataset}",
                "experiment": "{experiment}",
                "item": "search page",
            },
        ),
        results="results/{dataset}/{experiment}/search/demo.json",
    log:
        "logs/search/{dataset}/{experiment}/demo.log",
    benchmark:
        "logs/benchmarks/search/{dataset}/{experiment}/demo.tsv"
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        queries=get_search_queries,
        captions=get_search_captions,
        top=get_search_top,
    shell:
        "python -m tbps search --index {input.index:q} --captions {params.captions:q}"
        " --top {params.top:q} --html {output.page:q} --out {output.results:q}"
        " -- {params.queries:q} > {log:q} 2>&1"
