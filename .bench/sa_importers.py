import sys, traceback
hits = {}
class Finder:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "sqlalchemy":
            for f in reversed(traceback.extract_stack()[:-1]):
                if "importlib" in f.filename or "<frozen" in f.filename or "site-packages/sqlalchemy" in f.filename:
                    continue
                key = f"{f.filename.split('lean15/')[-1]}:{f.lineno}"
                hits.setdefault(key, name)
                break
        return None
sys.meta_path.insert(0, Finder())
import atexit
atexit.register(lambda: print("\n".join(f"SA {k} ({v})" for k, v in hits.items()), file=sys.stderr))
sys.argv = ["statekeeper", *sys.argv[1:]]
from cli.main import main
main()
