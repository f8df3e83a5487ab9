// Adds to tests/fixtures/fossil_vectors.json (written by
// scripts/fossil-vectors.mjs from the npm fossil-delta package) the delta
// that Centrifugo's encoder, github.com/shadowspore/fossil-delta, makes for
// each source and target: src/protocol/fossil.rs reproduces that one byte
// for byte, and applies both.
//
//	cd scripts/fossil-vectors && go run . < ../../tests/fixtures/fossil_vectors.json > /tmp/v.json
package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"

	fdelta "github.com/shadowspore/fossil-delta"
)

type vector struct {
	Name            string `json:"name"`
	Source          string `json:"source"`
	Target          string `json:"target"`
	Delta           string `json:"delta"`
	DeltaCentrifugo string `json:"delta_centrifugo"`
}

func main() {
	var vectors []vector
	if err := json.NewDecoder(os.Stdin).Decode(&vectors); err != nil {
		panic(err)
	}
	for i, v := range vectors {
		src, _ := hex.DecodeString(v.Source)
		dst, _ := hex.DecodeString(v.Target)
		d := fdelta.Create(src, dst)
		back, err := fdelta.Apply(src, d)
		if err != nil || !bytes.Equal(back, dst) {
			panic("reference does not round-trip: " + v.Name)
		}
		vectors[i].DeltaCentrifugo = hex.EncodeToString(d)
	}
	out, _ := json.MarshalIndent(vectors, "", " ")
	os.Stdout.Write(append(out, '\n'))
}
