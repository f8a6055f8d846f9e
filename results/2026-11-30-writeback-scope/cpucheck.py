# cpucheck.py PID SECONDS: CPU ticks of process PID and each of its descendants over SECONDS
# (own = user + system, children = of its waited-for children), from /proc.
import os,sys,time
root=int(sys.argv[1])
def procs():
    d={}
    for p in os.listdir('/proc'):
        if not p.isdigit(): continue
        try: l=open(f'/proc/{p}/stat').read()
        except: continue
        f=l[l.rfind(')')+2:].split()
        d[int(p)]=(int(f[1]),int(f[11])+int(f[12]),int(f[13])+int(f[14]),l[l.find('(')+1:l.rfind(')')])
    return d
def tree(d):
    ch={}
    for p,(pp,*_) in d.items(): ch.setdefault(pp,[]).append(p)
    out=[];todo=[root]
    while todo:
        p=todo.pop(); out.append(p); todo+=ch.get(p,[])
    return out
def mach():
    f=list(map(int,open('/proc/stat').readline().split()[1:]))
    return f[0]+f[1]+f[2]+f[5]+f[6]
d0=procs();m0=mach()
time.sleep(float(sys.argv[2]))
d1=procs();m1=mach()
for p in sorted(set(tree(d0))|set(tree(d1))):
    a=d0.get(p,(0,0,0,'-'));b=d1.get(p,(0,0,0,'-'))
    if (b[1]-a[1])|(b[2]-a[2]): print(p,b[3] if b[3]!='-' else a[3],'own',b[1]-a[1],'children',b[2]-a[2], 'new' if p not in d0 else '')
print('machine',m1-m0)
