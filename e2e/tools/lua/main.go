// luacheck runs the Lua scripts Channel Contracts ships for Argo CD and Karmada the way those projects run
// them: with gopher-lua (github.com/yuin/gopher-lua), the same libraries opened, the object given as Lua
// tables decoded from JSON, and the result encoded back to JSON.
//
//	luacheck argocd-health SCRIPT.lua OBJECT.json
//	    Argo CD (util/lua/lua.go): only the package, base and table libraries and a safe os (time, date);
//	    no string library. The object is the global `obj`; the script returns {status, message}.
//	luacheck karmada SCRIPT.lua FUNCTION ARGS.json
//	    Karmada's resource interpreter: package, base, table, string, math and a safe os. The script
//	    defines FUNCTION (InterpretHealth, ReflectStatus, AggregateStatus, Retain, ...), which is called
//	    with the elements of the JSON array ARGS; its results are printed as a JSON array.
//
// Both run under a one-second deadline, like Argo CD's. The output is one JSON value on stdout; a script
// error goes to stderr with exit code 1.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "luacheck:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 3 {
		return fmt.Errorf("usage: luacheck argocd-health SCRIPT OBJECT.json | luacheck karmada SCRIPT FUNCTION ARGS.json")
	}
	script, err := os.ReadFile(args[1])
	if err != nil {
		return err
	}
	switch args[0] {
	case "argocd-health":
		var obj any
		if err := readJSON(args[2], &obj); err != nil {
			return err
		}
		l := newState([]lib{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}, {lua.OsLibName, openSafeOs}})
		defer l.Close()
		l.SetGlobal("obj", decode(l, obj))
		if err := l.DoString(string(script)); err != nil {
			return err
		}
		return print(encode(l.Get(-1)))
	case "karmada":
		if len(args) < 4 {
			return fmt.Errorf("karmada needs SCRIPT FUNCTION ARGS.json")
		}
		var callArgs []any
		if err := readJSON(args[3], &callArgs); err != nil {
			return err
		}
		l := newState([]lib{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}, {lua.StringLibName, lua.OpenString}, {lua.MathLibName, lua.OpenMath}, {lua.OsLibName, openSafeOs}})
		defer l.Close()
		if err := l.DoString(string(script)); err != nil {
			return err
		}
		fn := l.GetGlobal(args[2])
		if fn.Type() != lua.LTFunction {
			return fmt.Errorf("the script defines no function %s", args[2])
		}
		values := make([]lua.LValue, len(callArgs))
		for i, a := range callArgs {
			values[i] = decode(l, a)
		}
		top := l.GetTop()
		if err := l.CallByParam(lua.P{Fn: fn, NRet: lua.MultRet, Protect: true}, values...); err != nil {
			return err
		}
		var out []any
		for i := top + 1; i <= l.GetTop(); i++ {
			out = append(out, encode(l.Get(i)))
		}
		return print(out)
	}
	return fmt.Errorf("unknown mode %q", args[0])
}

type lib struct {
	name string
	open lua.LGFunction
}

func newState(libs []lib) *lua.LState {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	for _, p := range libs {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(p.open), NRet: 0, Protect: true}, lua.LString(p.name)); err != nil {
			panic(err)
		}
	}
	l.PreloadModule(lua.OsLibName, func(l *lua.LState) int {
		l.Push(l.SetFuncs(l.NewTable(), safeOs))
		return 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_ = cancel
	l.SetContext(ctx)
	return l
}

// The os functions both projects allow: time and date, nothing that touches the machine.
var safeOs = map[string]lua.LGFunction{
	"time": func(l *lua.LState) int { l.Push(lua.LNumber(time.Now().Unix())); return 1 },
	"date": func(l *lua.LState) int {
		l.Push(lua.LString(time.Now().UTC().Format(time.RFC3339)))
		return 1
	},
}

func openSafeOs(l *lua.LState) int {
	l.Push(l.RegisterModule(lua.OsLibName, safeOs))
	return 1
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

func print(v any) error {
	out, err := json.Marshal(v)
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

// decode turns a JSON value into Lua: objects and arrays become tables (arrays from index 1).
func decode(l *lua.LState, v any) lua.LValue {
	switch t := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(t)
	case float64:
		return lua.LNumber(t)
	case string:
		return lua.LString(t)
	case []any:
		tbl := l.CreateTable(len(t), 0)
		for _, e := range t {
			tbl.Append(decode(l, e))
		}
		return tbl
	case map[string]any:
		tbl := l.CreateTable(0, len(t))
		for k, e := range t {
			tbl.RawSetString(k, decode(l, e))
		}
		return tbl
	}
	return lua.LNil
}

// encode turns a Lua value into JSON: a table whose keys are exactly 1..n is an array, an empty table an
// empty object.
func encode(v lua.LValue) any {
	switch t := v.(type) {
	case *lua.LNilType:
		return nil
	case lua.LBool:
		return bool(t)
	case lua.LNumber:
		return float64(t)
	case lua.LString:
		return string(t)
	case *lua.LTable:
		n := t.Len()
		count := 0
		t.ForEach(func(_, _ lua.LValue) { count++ })
		if n > 0 && n == count {
			arr := make([]any, 0, n)
			for i := 1; i <= n; i++ {
				arr = append(arr, encode(t.RawGetInt(i)))
			}
			return arr
		}
		obj := map[string]any{}
		t.ForEach(func(k, e lua.LValue) { obj[k.String()] = encode(e) })
		return obj
	}
	return v.String()
}
