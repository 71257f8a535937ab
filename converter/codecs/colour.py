"""The colour-space rules: (transfer syntax, label, bitstream facts) -> what the decoded samples are.

PS3.5 8.2 (8.2.1 JPEG, 8.2.3 JPEG-LS, 8.2.4 JPEG 2000): "should the characteristics explicitly
specified in the compressed data stream be inconsistent with those specified in the DICOM Data
Elements, those explicitly specified in the compressed data stream should be used to control the
decompression. The DICOM data elements, if inconsistent, can be regarded as suggestions". So the
bitstream decides wherever it can say (JPEG markers and component ids, JPEG 2000's COD
multi-component transformation and SIZ subsampling, a JP2 colr box, a JPEG-LS SPIFF header) and
the PhotometricInterpretation label (PS3.3 C.7.6.3.1.2) only where it cannot; a label that is
not valid for its transfer syntax (PS3.5 tables 8.2.1-1, 8.2.3-1, 8.2.4-1) is a hint, never a
fact. Every decision carries the reason, for the conversion report.

This module is the pure rule table (no I/O, no codec): parsing is in converter.codecs.jpeg and
converter.codecs.j2k, decoding in converter.codecs.frames. docs/conversion.md lists the same
rules with their evidence; keep the two together.
"""

from __future__ import annotations

from dataclasses import dataclass

from converter.codecs.j2k import J2kInfo
from converter.codecs.jpeg import JpegInfo

RGB = "RGB"
YBR = "YBR_FULL"
GRAY = "MONOCHROME2"
UNSUPPORTED = "unsupported"

# Transfer syntax UID -> codec family.
_FAMILY = {
    "1.2.840.10008.1.2.4.50": "jpeg",
    "1.2.840.10008.1.2.4.51": "jpeg",
    "1.2.840.10008.1.2.4.57": "jpeg-lossless",
    "1.2.840.10008.1.2.4.70": "jpeg-lossless",
    "1.2.840.10008.1.2.4.80": "jpeg-ls",
    "1.2.840.10008.1.2.4.81": "jpeg-ls",
    "1.2.840.10008.1.2.4.90": "j2k",
    "1.2.840.10008.1.2.4.91": "j2k",
    "1.2.840.10008.1.2.4.92": "j2k",
    "1.2.840.10008.1.2.4.93": "j2k",
    "1.2.840.10008.1.2.4.201": "j2k",
    "1.2.840.10008.1.2.4.202": "j2k",
    "1.2.840.10008.1.2.4.203": "j2k",
    "1.2.840.10008.1.2": "native",
    "1.2.840.10008.1.2.1": "native",
}

# Colour labels valid per family (PS3.5 tables 8.2.1-1, 8.2.3-1, 8.2.4-1; PS3.3 C.7.6.3.1.2 for native).
VALID_LABELS = {
    "jpeg": {"RGB", "YBR_FULL", "YBR_FULL_422"},
    "jpeg-lossless": {"RGB", "YBR_FULL"},
    "jpeg-ls": {"RGB", "YBR_FULL"},
    "j2k": {"RGB", "YBR_FULL", "YBR_RCT", "YBR_ICT"},
    "native": {"RGB", "YBR_FULL"},
}


def family(transfer_syntax: str) -> str | None:
    return _FAMILY.get(transfer_syntax)


@dataclass(frozen=True)
class ColourDecision:
    label: str
    """The PhotometricInterpretation as written."""
    bitstream: str
    """What the frame's own header says about colour, in words."""
    decided: str
    """The colour space of the samples the decoder returns: RGB, YBR_FULL (converted to RGB by the
    PS3.3 C.7.6.3.1.2 equations; for JPEG Baseline libjpeg does it), MONOCHROME2, or 'unsupported'."""
    why: str
    label_valid: bool = True

    def as_report(self) -> dict[str, str]:
        return {"label": self.label, "bitstream": self.bitstream, "decided": self.decided, "why": self.why}


def _jpeg_words(info: JpegInfo) -> str:
    kind = {0xC3: "lossless SOF3", 0xF7: "JPEG-LS SOF55"}.get(info.sof, f"SOF{info.sof - 0xC0}")
    ids = ",".join(chr(i) if 65 <= i <= 90 else str(i) for i in info.component_ids)
    parts = [f"{kind}, {info.components} components (ids {ids}), sampling {info.subsampling[0]}x{info.subsampling[1]}"]
    parts.append("JFIF APP0" if info.jfif else "no JFIF")
    parts.append(f"Adobe APP14 transform {info.adobe_transform}" if info.adobe_transform is not None else "no Adobe APP14")
    if info.spiff_colour is not None:
        parts.append(f"SPIFF colour space {info.spiff_colour}")
    if info.hp_transform:
        parts.append(f"HP colour transform {info.hp_transform}")
    return ", ".join(parts)


def _j2k_words(info: J2kInfo) -> str:
    size = "chroma subsampled " + str(list(info.subsampling)) if info.chroma_subsampled else "all components full size"
    text = f"{'HTJ2K' if info.high_throughput else 'JPEG 2000'}: {info.components} components, {size} (SIZ), COD multiple component transformation {info.mct}"
    if info.jp2_colour is not None:
        text += f", JP2 colr enumerated colour space {info.jp2_colour}"
    return text


def _jpeg_markers(info: JpegInfo) -> tuple[str, str] | None:
    """What the JPEG markers say, if anything (libjpeg's rules, jdapimin.c default_decompress_parms)."""
    if info.jfif:
        return YBR, "a JFIF APP0 marker defines the components as YCbCr (ISO 10918-5)"
    if info.adobe_transform is not None:
        if info.adobe_transform == 0:
            return RGB, "Adobe APP14 transform 0: the components are RGB, untransformed"
        return YBR, f"Adobe APP14 transform {info.adobe_transform}: the components are YCbCr"
    if info.component_ids == (ord("R"), ord("G"), ord("B")):
        return RGB, "component ids 'R','G','B' (libjpeg's convention for untransformed RGB)"
    return None


def decide(transfer_syntax: str, label: str, facts: JpegInfo | J2kInfo | None, samples: int = 3) -> ColourDecision:
    """The rule table. `facts` are the frame's parsed header (None for native frames)."""
    label = (label or "").upper()
    fam = family(transfer_syntax) or "native"
    valid = label in VALID_LABELS[fam]
    if samples == 1 or (facts is not None and facts.components == 1):
        return ColourDecision(label, "1 component" if facts is not None else "native", GRAY, "one sample per pixel", True)
    hint = "" if valid else f"; the label {label} is not valid for this transfer syntax, so it is only a hint"

    if fam == "native":
        if label in (RGB, YBR):
            return ColourDecision(label, "native (no bitstream header)", label, f"native pixels: the label decides (PS3.3 C.7.6.3.1.2): {label}")
        return ColourDecision(label, "native (no bitstream header)", UNSUPPORTED,
                              f"native pixels labelled {label!r}: only RGB and YBR_FULL are supported uncompressed", False)

    if isinstance(facts, JpegInfo):
        words = _jpeg_words(facts)
        if fam == "jpeg-ls":
            if facts.hp_transform:
                return ColourDecision(label, words, RGB, f"the decoder inverts the HP colour transform {facts.hp_transform} (ISO 14495-2 / CharLS mrfx); its output is RGB{hint}", valid)
            if facts.spiff_colour in (10, 3, 8):
                space = {10: RGB, 3: YBR, 8: GRAY}[facts.spiff_colour]
                return ColourDecision(label, words, space, f"the SPIFF header names colour space {facts.spiff_colour} ({space}){hint}", valid)
        else:
            said = _jpeg_markers(facts)
            if said is not None:
                space, reason = said
                if label and ((space == RGB and label != RGB) or (space == YBR and not label.startswith("YBR"))):
                    reason += f"; the label {label} contradicts the bitstream, which wins (PS3.5 8.2.1)"
                elif not valid:
                    reason += hint
                return ColourDecision(label, words, space, reason, valid)
        if fam == "jpeg-ls" and facts.component_ids == (ord("R"), ord("G"), ord("B")):
            return ColourDecision(label, words, RGB, "component ids 'R','G','B'" + hint, valid)
        # Nothing in the bitstream names the colour space: PS3.5 8.2.1 note 2 (and 8.2.3 note 1,
        # which refers to it): "characteristics not explicitly specified in the compressed data
        # stream (e.g., the color space of the compressed components ...) can be determined from
        # the DICOM Data Element".
        if label == RGB:
            return ColourDecision(label, words, RGB, "no marker names the colour space; the label RGB decides (PS3.5 8.2.1 note 2)")
        if label.startswith("YBR_FULL") and (fam == "jpeg" or label == YBR):
            return ColourDecision(label, words, YBR, f"no marker names the colour space; the label {label} decides (PS3.5 8.2.1 note 2)")
        if fam == "jpeg":
            return ColourDecision(label, words, YBR, f"no marker names the colour space and the label {label!r} is not a colour label for JPEG; libjpeg's default for 3 components: YCbCr", valid)
        return ColourDecision(label, words, RGB,
                              f"no marker names the colour space{hint}; {'JPEG-LS' if fam == 'jpeg-ls' else 'lossless JPEG'} decoders never transform colour and the common practice is RGB components (PS3.5 8.2.3 note 2)", valid)

    if isinstance(facts, J2kInfo):
        words = _j2k_words(facts)
        if facts.chroma_subsampled:
            return ColourDecision(label, words, YBR,
                                  "SIZ subsamples the 2nd and 3rd components: they are chroma (RGB is never subsampled, and the multiple component transformation needs equal sizes, ISO 15444-1 G.2)" + hint, valid)
        if facts.mct == 1:
            ok = label in ("YBR_RCT", "YBR_ICT")
            reason = "COD applies the Part 1 multiple component transformation (RCT/ICT, ISO 15444-1 Annex G); the decoder inverts it, so its output is RGB (measured: imagecodecs' jpeg2k_decode returns the encoder's RGB input)"
            if not ok:
                reason += f"; the label {label} is inconsistent with MCT 1, for which PS3.5 8.2.4 note 2 permits only YBR_RCT or YBR_ICT: a hint"
            return ColourDecision(label, words, RGB, reason, ok)
        if facts.jp2_colour in (16, 18, 17):
            space = {16: RGB, 18: YBR, 17: GRAY}[facts.jp2_colour]
            return ColourDecision(label, words, space, f"the JP2 colr box names enumerated colour space {facts.jp2_colour} ({space}); OpenJPEG does not convert sYCC itself{hint}", valid)
        if label in (RGB, YBR):
            return ColourDecision(label, words, label,
                                  f"COD: no multiple component transformation, so the components are what the label says (PS3.5 8.2.4: {label} with MCT 0, note 3)")
        if label in ("YBR_RCT", "YBR_ICT"):
            return ColourDecision(label, words, RGB,
                                  f"{label} names the Part 1 transformation, which COD says was not applied (PS3.5 8.2.4 note 2 signals it by MCT 1), and the bitstream's explicit characteristics control decoding: the components are the encoder's untransformed input, RGB", False)
        return ColourDecision(label, words, RGB,
                              f"the label {label!r} is not valid for JPEG 2000 (PS3.5 table 8.2.4-1 allows RGB, YBR_FULL, YBR_RCT, YBR_ICT), only a hint; SIZ shows no chroma subsampling and COD no transformation, so the components are the encoder's input: RGB (a widely used DICOMizer writes RGB J2K labelled YBR_FULL_422)", False)

    return ColourDecision(label, "unreadable header", UNSUPPORTED, f"no bitstream facts for transfer syntax {transfer_syntax}", valid)
