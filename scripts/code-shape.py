#!/usr/bin/env python3
# The shape of the code, as issue 25 measures it: source files (under a src/ folder, and
# bench/) with their line counts (median, 90th percentile, largest, those over 700) and
# the functions over 80 lines outside tests (test modules after #[cfg(test)], tests.rs
# and tests/ folders are left out). Reads text only; runs nothing.
#
#   python3 scripts/code-shape.py [DIR]
import os, re, statistics, sys
root=sys.argv[1] if len(sys.argv)>1 else '.'
files=[]
for d,_,fs in os.walk(root):
    if any(x in d for x in ('/target','/node_modules','/.git')): continue
    for f in fs:
        if f.endswith('.rs'): files.append(os.path.join(d,f))
src=[f for f in files if '/src/' in f or f.startswith('./bench')]
lens=sorted((sum(1 for _ in open(f)),f) for f in src)
n=[l for l,_ in lens]
q=statistics.quantiles(n,n=10)
print('files',len(n),'median',statistics.median(n),'p90',round(q[8]),'max',max(n))
print('over 700:',[(l,f) for l,f in lens if l>700])
# long functions (non-test files, skip tests.rs and #[cfg(test)] modules roughly)
longs=[]
for f in src:
    if f.endswith('tests.rs') or '/tests/' in f: continue
    lines=open(f).read().split('\n')
    # stop at #[cfg(test)]
    end=len(lines)
    for i,l in enumerate(lines):
        if l.startswith('#[cfg(test)]'): end=i;break
    i=0
    while i<end:
        l=lines[i]
        m=re.match(r'\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)',l)
        if m:
            depth=0;started=False;j=i
            while j<end:
                for ch in lines[j]:
                    if ch=='{': depth+=1;started=True
                    elif ch=='}': depth-=1
                if started and depth==0: break
                if not started and lines[j].rstrip().endswith(';'): break
                j+=1
            if started:
                ln=j-i+1
                if ln>80: longs.append((ln,m.group(6),f))
            i=j+1
        else: i+=1
longs.sort(reverse=True)
print('functions over 80:',len(longs))
for x in longs: print('  ',x)
