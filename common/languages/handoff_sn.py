"""Shona handoff data (handoff area, issue 14): what asks for a person, what sounds frustrated.

As in handoff_en.py. Shona joins prefixes to words (ndinoda, ndoda, ndiri kuda; nemunhu,
kumunhu): the patterns allow them instead of a stemmer, and the classifier reads character
n-grams inside words as well as whole words, so "ndashatirwa" and "ndakashatirwa" share evidence.
"""

from __future__ import annotations

EXPLICIT = (
    # "I want to speak with a person": ndoda / ndinoda / ndiri kuda / ndaida kutaura nemunhu
    r"\b(ndoda|ndinoda|ndiri kuda|ndaida|ndingade|ndingada) (ku)?(taura|kutaura|kukurukura|kuonana)"
    r" ne(munhu|mumwe munhu|mushandi|mukuru|mumiriri|vanhu)\b",
    r"\bmunhu (chaiye|chaiyo|mupenyu)\b",  # a real person
    # "connect me / send me / give me a person": ndibatanidzei, ndiendesei, ndipei ... munhu
    r"\bndi(batanidze|batanidzei|endese|endesei|pe|pei|tsvagire|tsvagirei)\b.*\b(ku|ne)?munhu\b",
    r"\b(taura|kutaura|ndotaura) nemunhu\b",
    r"^(munhu|mushandi|mumiriri)( ndapota)?$",
)
NOT_EXPLICIT = (
    r"\b(handidi|handisi kuda|hatidi) (ku)?(taura|kutaura)",  # I don't want to talk
    r"\b(handidi|hazvidi) munhu\b",
)

PHRASES = {
    "timeout": "Ndine urombo, hapana ari pachena kukubatsirai izvozvi. Ndicharamba ndichikubatsirai.",
    "timeout_end": "Ndine urombo, hapana ari pachena kukubatsirai izvozvi. Ndapota fonerai gare gare.",
}

FRUSTRATED = (
    "hazvishande",  # it does not work
    "hazvisi kushanda",
    "hazvisi kushanda zvachose",
    "ndaneta nazvo",  # I am tired of it
    "ndaneta newe",
    "ndaneta chaizvo",
    "ndashatirwa",  # I am angry
    "ndashatirwa chaizvo",
    "ndakashatirwa",
    "ndatsamwa",
    "ndakatsamwa zvikuru",
    "ndaguta nazvo",  # I am fed up
    "ndaguta newe",
    "hauna basa",  # you are useless
    "hauna basa zvachose",
    "iwe hauna kana basa",
    "uri benzi",  # you are a fool
    "uri rema",
    "muchina webenzi",
    "hauna kana chaunoziva",  # you know nothing
    "hauzivi chinhu",
    "hausi kundinzwa",  # you are not hearing me
    "hausi kunzwa here",
    "hausi kuteerera",  # you are not listening
    "teerera iwe",
    "ndakuudza kare",  # I told you already
    "ndakuudza kakawanda",
    "ndakuudza katatu",
    "kangani ndichidzokorora",  # how many times am I repeating
    "ndozodzokorora kangani",
    "handizvo zvandabvunza",  # that is not what I asked
    "handizvo",
    "kwete kwete handizvo",
    "wakanganisa zvakare",  # wrong again
    "unongokanganisa",
    "zvakaipa chaizvo",  # very bad
    "zvakaipisisa",
    "izvi zvinonetsa",  # this is troublesome
    "unonetsa",
    "unondinetsa",
    "nhamo chaiyo",
    "ko chii ichi",  # what is this nonsense
    "zvisina maturo",  # pointless
    "hazvina maturo",
    "urikutambisa nguva yangu",  # you are wasting my time
    "uri kutambisa nguva",
    "ndarasa nguva yangu",
    "nyarara",  # shut up
    "nyarara iwe",
    "siyana nazvo",  # forget it
    "ndasiyana nazvo",
    "handichada",
    "ndakakundwa",  # I give up
    "ndapererwa",
    "unondipengesa",  # you drive me crazy
    "uri kundipengesa",
    "handikwanisi kutaura newe",
    "ndinovenga izvi",  # I hate this
    "ndinovenga muchina uyu",
    "haunzwisise chinhu",
    "sei usinganzwisise",  # why don't you understand
    "sei zvakaoma kudai",
    "hazvigoneke",
    "ini ndaneta",
    "zvinosemesa",  # disgusting
    "ndiri kuda kunyunyuta",  # I want to complain
    "unopenga here",  # are you mad
    "zvinoshatirisa",
    "zvinotsamwisa",
    "hapana chaunobatsira",
)

CALM = (
    "mhoro",  # hello
    "mhoro makadii",
    "makadii",
    "ndiripo makadiiwo",
    "mangwanani",  # good morning
    "masikati",
    "manheru",
    "ndatenda",  # thank you
    "ndatenda chaizvo",
    "maita basa",
    "zvakanaka",  # good
    "zvakanaka ndatenda",
    "hongu",  # yes
    "hongu ndapota",
    "kwete ndatenda",  # no thank you
    "ndizvo",
    "ndanzwisisa",  # I understand
    "guta guru reZimbabwe nderipi",  # capital of Zimbabwe
    "Harare iri kupi",
    "imhepo yakaita sei nhasi",  # how is the weather today
    "kunze kwakaita sei nhasi",
    "mvura ichanaya here mangwana",
    "nguva yei",  # what time is it
    "inguva yei izvozvi",
    "nhasi izuva ripi",
    "ndibatsireiwo kubhuka tikiti",  # help me book a ticket
    "ndinoda kubhadhara bhiri",
    "ndinoda kutumira mari",
    "ndinoda kuziva mari iri muakaundi",
    "ndinoda kuchinja kero yangu",
    "ndakanganwa pasiwedhi yangu",
    "ndingachinja sei pasiwedhi",
    "kadhi rangu harisi kushanda mungandibatsira here",
    "ndine dambudziko neakaundi yangu",
    "bhazi rinoenda kuBulawayo riripi",
    "kubva kuHarare kuenda kuMutare chinhambwe chakadii",
    "zvinodhura marii",
    "chitoro chakavhurwa here nhasi",
    "kiriniki iri pedyo iri kupi",
    "ndiudzeiwo nyaya",
    "ndiudzeiwo zvakawanda",
    "ko mangwana",
    "ko neSvondo",
    "mungadzokorora here",  # could you repeat
    "taurai zvishoma nezvishoma",
    "izwi iri rinorevei",
    "ndinoda kuziva nezveVictoria Falls",
    "munoti sei mhoro muChirungu",
    "ndeipi timu yakahwina",
    "ndinoda kuodha chikafu",
    "mirai kamwe",  # wait a moment
    "regai ndifunge",
    "handizivi",  # I don't know
    "matii",
    "handina kunzwa zvamataura",
    "zvakanaka kwazvo",
    "ndafara",  # I am happy
    "ndiri kufara nhasi",
    "ndinoda kuziva nezvechirongwa",
    "vanhu vangani vanogara muHarare",
    "ndibikei chii manheru ano",
    "ndayeuchidza kufonera amai",
    "isa alarm yemaminitsi mashanu",
    "ridza rwiyo",
    "chiyero chemari chakamira sei",
    "ndingakwereta mari sei",
    "dambudziko hapana",
    "zviri nani",
    "ndiri kuzvinzwa",
    "kwakanaka kunze nhasi",
)
