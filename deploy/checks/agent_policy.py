"""Evaluates the chart's agent ValidatingAdmissionPolicy (CEL) on admission requests an agent could send.

Run: python3 -m pip install --target .tools/cel cel-python==0.5.0 pyyaml   (e2e/tools/install-deps.sh does it)
     helm template pollen charts/pollen -n pollen-system -s templates/agent-admission-policy.yaml > /tmp/vap.yaml
     PYTHONPATH=.tools/cel python3 deploy/checks/agent_policy.py /tmp/vap.yaml
The chart test agent_admission_policy_allows_and_denies_what_it_says runs it.
cel-python is a CEL implementation, not the API server's (cel-go with Kubernetes' extensions); this checks
the policy's logic, and the API server still checks it when the policy is created. Exit status 1 on a mismatch.
"""
import sys
import yaml, celpy
docs=[d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
vap=[d for d in docs if d['kind']=='ValidatingAdmissionPolicy'][0]['spec']
env=celpy.Environment()
from celpy import celtypes
def conv(k,v):
    if k=='variables':
        return celtypes.MapType({celtypes.StringType(a):b for a,b in v.items()})
    return celpy.json_to_cel(v)
def ev(expr, act):
    ast=env.compile(expr)
    prog=env.program(ast)
    return prog.evaluate({k: conv(k,v) for k,v in act.items()})
def run(request, obj, old):
    act={'request':request,'object':obj,'oldObject':old}
    # match condition
    mc=[ev(m['expression'],act) for m in vap['matchConditions']]
    if not all(mc): return 'not matched'
    variables={}
    for v in vap['variables']:
        a=dict(act); a['variables']=variables
        variables[v['name']]=ev(v['expression'],a)
    act['variables']=variables
    fails=[]
    for i,val in enumerate(vap['validations']):
        # an evaluation error (e.g. a missing key) denies too (failurePolicy Fail), but not with the
        # validation's message: report it apart
        try: r=ev(val['expression'],act)
        except celpy.evaluation.CELEvalError as e: fails.append(f'{i}: error {e.args[0]}'); continue
        if not bool(r): fails.append(i)
    return fails or 'allowed'
agent='system:serviceaccount:pollen-system:pollen-edge-node'
# As the API server builds `request`: no subResource key at all for a request on the main resource.
def req(op, res='edgenodes', sub='', node='gw-1', user=agent):
    return {'operation':op,'resource':{'group':'pollen.dev','version':'v1alpha1','resource':res},**({'subResource':sub} if sub else {}),
            'userInfo':{'username':user,'extra':{'authentication.kubernetes.io/node-name':[node]}}}
en=lambda name,labels=None,spec=None,fin=None,ann=None: {'metadata':{'name':name,**({'labels':labels} if labels else {}),**({'finalizers':fin} if fin is not None else {}),**({'annotations':ann} if ann is not None else {})},**({'spec':spec} if spec is not None else {})}
led={'pollen.dev/issued-certificates':'[{"serial":"ab"}]'}
rev=['pollen.dev/revocation']
spec={'assignments':[{'rollout':'a/b'}]}
cases=[
 ('own create, no spec', req('CREATE'), en('gw-1'), None, 'allowed'),
 ('own create with labels', req('CREATE'), en('gw-1',{'role':'camera'}), None, [2]),
 ('own status patch', req('UPDATE',sub='status'), en('gw-1',spec=spec), en('gw-1',spec=spec), 'allowed'),
 ('own status patch, labels kept', req('UPDATE',sub='status'), en('gw-1',{'role':'gw'},spec), en('gw-1',{'role':'gw'},spec), 'allowed'),
 ('own status patch, labels added', req('UPDATE',sub='status'), en('gw-1',{'role':'gw'},spec), en('gw-1',None,spec), [2]),
 ('own labels patch', req('UPDATE'), en('gw-1',{'role':'gw'},spec), en('gw-1',None,spec), [2]),
 ('label value changed', req('UPDATE'), en('gw-1',{'role':'any'},spec), en('gw-1',{'role':'gw'},spec), [2]),
 ('label removed', req('UPDATE'), en('gw-1',None,spec), en('gw-1',{'role':'gw'},spec), [2]),
 ('other node', req('UPDATE',sub='status'), en('gw-2'), en('gw-2'), [0]),
 ('no node name in token', {**req('UPDATE',sub='status'),'userInfo':{'username':agent}}, en('gw-1'), en('gw-1'), [0]),
 ('create with assignments', req('CREATE'), en('gw-1',spec=spec), None, [1]),
 ('spec change', req('UPDATE'), en('gw-1',spec={'assignments':[]}), en('gw-1',spec=spec), [1]),
 ('clear quarantine', req('UPDATE'), en('gw-1',{'role':'x'},spec), en('gw-1',{'pollen.dev/quarantine':'true'},spec), [2]),
 ('set quarantine false', req('UPDATE'), en('gw-1',{'pollen.dev/quarantine':'false'},spec), en('gw-1',{'pollen.dev/quarantine':'true'},spec), [2]),
 ('keep quarantine, add a label', req('UPDATE'), en('gw-1',{'pollen.dev/quarantine':'true','a':'b'},spec), en('gw-1',{'pollen.dev/quarantine':'true'},spec), [2]),
 ('drop finalizer', req('UPDATE'), en('gw-1',None,spec,[]), en('gw-1',None,spec,rev), [3]),
 ('drop finalizers field', req('UPDATE'), en('gw-1',None,spec), en('gw-1',None,spec,rev), [3]),
 ('add finalizer', req('UPDATE'), en('gw-1',None,spec,rev+['x']), en('gw-1',None,spec,rev), [3]),
 ('keep finalizer and labels', req('UPDATE'), en('gw-1',{'a':'b'},spec,rev), en('gw-1',{'a':'b'},spec,rev), 'allowed'),
 ('drop ledger', req('UPDATE'), en('gw-1',None,spec,ann={}), en('gw-1',None,spec,ann=led), [4]),
 ('edit ledger', req('UPDATE'), en('gw-1',None,spec,ann={'pollen.dev/issued-certificates':'[]'}), en('gw-1',None,spec,ann=led), [4]),
 ('create with ledger', req('CREATE'), en('gw-1',ann=led), None, [4]),
 ('keep ledger, other annotation', req('UPDATE'), en('gw-1',None,spec,ann={**led,'x':'y'}), en('gw-1',None,spec,ann=led), 'allowed'),
 ('csr ok', {**req('CREATE',res='certificatesigningrequests')}, {'metadata':{'name':'x'},'spec':{'signerName':'pollen.dev/edge-peer'}}, None, 'allowed'),
 ('csr other signer', {**req('CREATE',res='certificatesigningrequests')}, {'metadata':{'name':'x'},'spec':{'signerName':'kubernetes.io/kube-apiserver-client'}}, None, [5]),
 ('operator not matched', req('UPDATE',user='system:serviceaccount:pollen-system:pollen-operator'), en('gw-2',spec={}), en('gw-2',spec=spec), 'not matched'),
]
bad=0
for name,r,o,old,want in cases:
    got=run(r,o,old)
    ok = got==want
    bad+= not ok
    print(('ok  ' if ok else 'FAIL'), name, got)
print('failures', bad)
sys.exit(1 if bad else 0)
