"""Per text, the stages of a capacity run (target -> prefix verified by greedy
decoding, a failed stage marked, steps in brackets) as a Markdown table.

Usage: python3 scripts/capacity_stages.py RUN_DIR/capacity.sqlite TEXTS.jsonl
(docs/capacity.md: target/bench_capacity/gallop/capacity.sqlite and
target/bench_capacity/texts.jsonl from scripts/bench_capacity.sh)."""
import sqlite3,json,sys
c=sqlite3.connect(f'file:{sys.argv[1]}?mode=ro',uri=True)
texts=[json.loads(l) for l in open(sys.argv[2])]
st={}
for t,s,L,pre,ex,steps in c.execute("select text_index, stage, target, prefix, exact, steps from stages order by text_index, stage"):
    st.setdefault(t,[]).append((L,pre,ex,steps))
done={t:(h,d) for t,h,d in c.execute("select text_index,horizon,done from texts")}
print("| text | stages: target → verified prefix (steps) | horizon | steps |")
print("|---|---|---:|---:|")
tot=0
for t in sorted(st):
    ss=st[t]; n=sum(x[3] for x in ss); tot+=n
    h,d=done[t]
    cells=", ".join(f"{L}→{pre}{'' if ex else '✗'} ({steps})" for L,pre,ex,steps in ss)
    print(f"| {texts[t]['id']} | {cells} | {h}{'' if d else ' (running)'} | {n} |")
print(f"| **all** | | mean {sum(done[t][0] for t in st)/len(st):.1f} | {tot} |")
rows = [(t, *s) for t in sorted(st) for s in st[t]]
failed = sum(r[4] for r in rows if not r[3])
near = sum(r[4] for r in rows if not r[3] and r[1] - done[r[0]][0] <= 4)
print(f"\nsteps of stages that succeeded: {tot - failed}; failed: {failed}; "
      f"failed within 4 tokens of the final horizon: {near} ({100 * near / tot:.0f}%)")
