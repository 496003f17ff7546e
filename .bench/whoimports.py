import sys, traceback
WATCH = tuple(sys.argv[1].split(","))
seen = set()
class Finder:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in WATCH and top not in seen:
            seen.add(top)
            st = [f"{f.filename.split('lean15/')[-1]}:{f.lineno}" for f in traceback.extract_stack()[:-1] if "importlib" not in f.filename and "<frozen" not in f.filename]
            print("FIRST", name, "<-", " <- ".join(reversed(st[-5:])), file=sys.stderr)
        return None
sys.meta_path.insert(0, Finder())
sys.argv = ["statekeeper", *sys.argv[2:]]
from cli.main import main
main()
